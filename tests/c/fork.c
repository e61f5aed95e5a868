/* A program that forks after using libbenchfs (tests/capi.rs): the child's calls (setters
 * and init too) fail with ENOTSUP and a message, the child exits normally, and the parent's descriptor and
 * its own exit are unharmed. BENCHFS_REGISTRY names the cluster. */
#include <benchfs.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    if (benchfs_init(NULL) != 0) {
        printf("init: %s\n", benchfs_last_error());
        return 1;
    }
    char data[8192];
    memset(data, 'p', sizeof data);
    int fd = benchfs_create("/forked", O_RDWR, 0644);
    if (fd < 0 || benchfs_pwrite(fd, data, sizeof data, 0) != (ssize_t)sizeof data) {
        printf("parent write: %s\n", benchfs_last_error());
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        char buf[16];
        struct stat st;
        int refused = benchfs_pread(fd, buf, sizeof buf, 0) < 0 && errno == ENOTSUP &&
                      benchfs_stat("/forked", &st) < 0 && errno == ENOTSUP &&
                      strstr(benchfs_last_error(), "fork") != NULL &&
                      benchfs_set_chunk_size(65536) < 0 && errno == ENOTSUP &&
                      benchfs_init(NULL) < 0 && errno == ENOTSUP;
        printf("child refused: %d\n", refused);
        fflush(stdout);
        exit(refused ? 0 : 3); /* exit(), not _exit(): the atexit path is what aborted */
    }
    int status = 0;
    waitpid(child, &status, 0);
    char back[8192];
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("child ended badly: %d\n", status);
        return 1;
    }
    if (benchfs_pread(fd, back, sizeof back, 0) != (ssize_t)sizeof back ||
        memcmp(back, data, sizeof back) != 0 || benchfs_close(fd) != 0) {
        printf("parent after the fork: %s\n", benchfs_last_error());
        return 1;
    }
    printf("parent fine\n");
    return 0;
}
