/* A thread whose call timed out (every server stopped) returns, and the program exits:
 * both must end normally. libbenchfs keeps each thread's client in a thread-local, whose
 * destructor at thread exit once woke tasks into tokio's already destroyed thread state,
 * and the process aborted (SIGABRT). Prints "joined" and exits 0 when all went well. */
#include <benchfs.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>

static int thread_errno;

static void *stat_once(void *arg)
{
    struct stat st;
    (void)arg;
    if (benchfs_stat("/never", &st) != 0) {
        thread_errno = errno;
    }
    return NULL;
}

int main(void)
{
    if (benchfs_init(NULL) != 0) {
        fprintf(stderr, "benchfs_init: %s\n", benchfs_last_error());
        return 2;
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, stat_once, NULL) != 0) {
        return 2;
    }
    pthread_join(thread, NULL);
    printf("joined: thread errno %d\n", thread_errno);
    struct stat st;
    int rc = benchfs_stat("/never", &st);
    printf("main: rc %d errno %d\n", rc, rc ? errno : 0);
    fflush(stdout);
    return thread_errno == ETIMEDOUT ? 0 : 3;
}
