/*
 * Calls every function of libbenchfs against a running cluster ($BENCHFS_REGISTRY) and
 * checks results and errno; then 4 threads at once on distinct files. Exits 0 when every
 * check passed; prints each failed check with its line.
 */
#define _GNU_SOURCE
#include <benchfs.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int checks, failures;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "FAILED line %d: %s (errno %d: %s; last error: %s)\n",        \
                    __LINE__, #cond, errno, strerror(errno), benchfs_last_error());        \
        }                                                                                  \
    } while (0)

/* The call fails with -1 and this errno. */
#define CHECK_ERR(call, want)                                                              \
    do {                                                                                   \
        errno = 0;                                                                         \
        long rc_ = (long)(call);                                                           \
        CHECK(rc_ == -1 && errno == (want));                                               \
    } while (0)

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL | 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
}

struct listing {
    int count;
    int saw_g;
    int stop_after;
};

static int collect(void *ctx, const char *name, const struct stat *st, off_t off)
{
    struct listing *l = ctx;
    (void)off;
    l->count++;
    if (strcmp(name, "g") == 0 && S_ISREG(st->st_mode) && st->st_size == 1000)
        l->saw_g = 1;
    return l->stop_after && l->count >= l->stop_after;
}

static void files_and_errors(void)
{
    enum { LEN = 200 * 1024 };
    static unsigned char data[LEN], back[LEN];
    struct stat st;

    CHECK(benchfs_mkdir("/c", 0755) == 0);
    CHECK_ERR(benchfs_mkdir("/c", 0755), EEXIST);
    CHECK_ERR(benchfs_mkdir("/missing/d", 0755), ENOENT);

    /* Write, read back, sparse hole, positions. */
    int fd = benchfs_create("/c/f", O_RDWR, 0644);
    CHECK(fd >= 0);
    fill(data, LEN, 1);
    CHECK(benchfs_pwrite(fd, data, LEN, 0) == LEN);
    CHECK(benchfs_pwrite(fd, "tail", 4, 1 << 20) == 4);
    memset(back, 0xee, LEN);
    CHECK(benchfs_pread(fd, back, LEN, 0) == LEN);
    CHECK(memcmp(back, data, LEN) == 0);
    memset(back, 0xee, 4096);
    CHECK(benchfs_pread(fd, back, 4096, LEN + 4096) == 4096);
    int zeros = 1;
    for (int i = 0; i < 4096; i++)
        zeros &= back[i] == 0;
    CHECK(zeros);
    CHECK(benchfs_seek(fd, 0, SEEK_END) == (1 << 20) + 4);
    CHECK(benchfs_seek(fd, 10, SEEK_SET) == 10);
    CHECK(benchfs_read(fd, back, 5) == 5);
    CHECK(memcmp(back, data + 10, 5) == 0);
    CHECK(benchfs_seek(fd, 0, SEEK_CUR) == 15);
    CHECK(benchfs_write(fd, "XY", 2) == 2);
    CHECK(benchfs_pread(fd, back, 2, 15) == 2 && memcmp(back, "XY", 2) == 0);
    CHECK_ERR(benchfs_seek(fd, 0, 42), EINVAL);
    CHECK_ERR(benchfs_seek(fd, -100, SEEK_SET), EINVAL);
    CHECK(benchfs_pread(fd, back, 100, (1 << 20) + 4) == 0);
    CHECK(benchfs_fsync(fd) == 0);
    CHECK(benchfs_fstat(fd, &st) == 0 && st.st_size == (1 << 20) + 4 && S_ISREG(st.st_mode));
    CHECK(benchfs_ftruncate(fd, 1000) == 0);
    CHECK(benchfs_fstat(fd, &st) == 0 && st.st_size == 1000);
    CHECK_ERR(benchfs_ftruncate(fd, -1), EINVAL);
    CHECK(benchfs_close(fd) == 0);
    CHECK_ERR(benchfs_close(fd), EBADF);
    CHECK_ERR(benchfs_pwrite(fd, data, 1, 0), EBADF);
    CHECK_ERR(benchfs_fsync(12345678), EBADF);

    /* Metadata. */
    CHECK(benchfs_stat("/c/f", &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 1000 &&
          (st.st_mode & 0777) == 0644 && st.st_nlink == 1);
    CHECK(benchfs_stat("/c", &st) == 0 && S_ISDIR(st.st_mode));
    CHECK_ERR(benchfs_stat("/c/nope", &st), ENOENT);
    CHECK(strstr(benchfs_last_error(), "/c/nope") != NULL);
    CHECK_ERR(benchfs_stat("", &st), ENOENT);
    CHECK_ERR(benchfs_stat("/c/f/x", &st), ENOTDIR);
    CHECK_ERR(benchfs_stat("relative", &st), EINVAL);
    CHECK_ERR(benchfs_stat(NULL, &st), EFAULT);
    CHECK_ERR(benchfs_stat("/c/f", NULL), EFAULT);
    struct statvfs vfs;
    CHECK(benchfs_statvfs("/c/f", &vfs) == 0 && vfs.f_bsize == 4096 && vfs.f_frsize == 4096 &&
          vfs.f_blocks >= vfs.f_bfree && vfs.f_bfree > 0 && vfs.f_bavail == vfs.f_bfree &&
          vfs.f_files >= vfs.f_ffree + 2 && vfs.f_namemax == 255);
    CHECK_ERR(benchfs_statvfs("/c/nope", &vfs), ENOENT);
    CHECK_ERR(benchfs_statvfs("/c", NULL), EFAULT);
    CHECK(benchfs_access("/c/f", F_OK) == 0);
    CHECK(benchfs_access("/c/f", R_OK | W_OK) == 0);
    CHECK_ERR(benchfs_access("/c/f", X_OK), EACCES);
    CHECK_ERR(benchfs_access("/c/nope", F_OK), ENOENT);
    CHECK_ERR(benchfs_access("/c/f", 0100), EINVAL);

    /* Open flags. */
    CHECK_ERR(benchfs_open("/c/f", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
    CHECK_ERR(benchfs_open("/c/none", O_RDONLY, 0), ENOENT);
    CHECK_ERR(benchfs_open(NULL, O_RDONLY, 0), EFAULT);
    fd = benchfs_open("/c/f", O_RDONLY, 0);
    CHECK(fd >= 0);
    CHECK_ERR(benchfs_ftruncate(fd, 10), EINVAL);
    CHECK_ERR(benchfs_pread(fd, NULL, 10, 0), EFAULT);
    CHECK_ERR(benchfs_pread(fd, back, 10, -1), EINVAL);
    CHECK(benchfs_pread(fd, back, LEN, 0) == 1000 && memcmp(back, data, 15) == 0);
    CHECK(benchfs_close(fd) == 0);
    fd = benchfs_open("/c/ro", O_CREAT | O_WRONLY, 0444);
    CHECK(fd >= 0 && benchfs_close(fd) == 0);
    CHECK_ERR(benchfs_access("/c/ro", W_OK), EACCES);

    /* Truncate, rename, readdir. */
    CHECK(benchfs_truncate("/c/ro", 5000) == 0);
    CHECK(benchfs_stat("/c/ro", &st) == 0 && st.st_size == 5000);
    CHECK_ERR(benchfs_truncate("/c/ro", -5), EINVAL);
    CHECK_ERR(benchfs_truncate("/c", 0), EISDIR);
    /* O_DIRECTORY: a directory opens, a file does not, and it never creates. */
    fd = benchfs_open("/c", O_RDONLY | O_DIRECTORY, 0);
    CHECK(fd >= 0 && benchfs_close(fd) == 0);
    CHECK_ERR(benchfs_open("/c/ro", O_RDONLY | O_DIRECTORY, 0), ENOTDIR);
    CHECK(strstr(benchfs_last_error(), "/c/ro") != NULL);
    CHECK_ERR(benchfs_open("/c", O_RDONLY | O_TRUNC, 0), EISDIR); /* O_TRUNC asks to write */
    CHECK_ERR(benchfs_open("/c/newdir", O_RDONLY | O_CREAT | O_DIRECTORY, 0755), EINVAL);
    CHECK_ERR(benchfs_stat("/c/newdir", &st), ENOENT);
    CHECK(benchfs_rename("/c/f", "/c/g") == 0);
    CHECK_ERR(benchfs_stat("/c/f", &st), ENOENT);
    CHECK(benchfs_stat("/c/g", &st) == 0 && st.st_size == 1000);
    CHECK_ERR(benchfs_rename("/c/none", "/c/h"), ENOENT);
    struct listing all = {0, 0, 0};
    CHECK(benchfs_readdir("/c", &all, collect) == 0 && all.count == 2 && all.saw_g);
    struct listing one = {0, 0, 1};
    CHECK(benchfs_readdir("/c", &one, collect) == 0 && one.count == 1);
    CHECK_ERR(benchfs_readdir("/c/g", &all, collect), ENOTDIR);
    CHECK_ERR(benchfs_readdir("/c", &all, NULL), EFAULT);

    /* Removal. */
    CHECK_ERR(benchfs_rmdir("/c"), ENOTEMPTY);
    CHECK_ERR(benchfs_unlink("/c"), EISDIR);
    CHECK(benchfs_unlink("/c/g") == 0);
    CHECK_ERR(benchfs_unlink("/c/g"), ENOENT);
    CHECK(benchfs_unlink("/c/ro") == 0);
    CHECK(benchfs_rmdir("/c") == 0);
    CHECK_ERR(benchfs_rmdir("/c"), ENOENT);
}

static void settings(void)
{
    struct stat st;
    CHECK_ERR(benchfs_set_rdma_thresh(65536), EBUSY);
    CHECK_ERR(benchfs_set_rpc_timeout_msec(5000), EBUSY);
    CHECK_ERR(benchfs_set_chunk_size(3 << 16), EINVAL);
    CHECK(benchfs_set_chunk_size(1 << 16) == 0);
    int fd = benchfs_create("/chunked", O_WRONLY, 0644);
    CHECK(fd >= 0 && benchfs_fstat(fd, &st) == 0 && st.st_blksize == 1 << 16);
    /* Written across several of its chunks, and read back. */
    static unsigned char data[200000], back[200000];
    fill(data, sizeof data, 7);
    CHECK(benchfs_pwrite(fd, data, sizeof data, 0) == (ssize_t)sizeof data);
    CHECK(benchfs_close(fd) == 0);
    CHECK(benchfs_set_chunk_size(1 << 14) == 0);
    fd = benchfs_create("/chunked2", O_RDWR, 0644);
    CHECK(fd >= 0 && benchfs_fstat(fd, &st) == 0 && st.st_blksize == 1 << 14);
    CHECK(benchfs_pwrite(fd, data, sizeof data, 0) == (ssize_t)sizeof data);
    CHECK(benchfs_pread(fd, back, sizeof back, 0) == (ssize_t)sizeof back);
    CHECK(memcmp(back, data, sizeof data) == 0);
    CHECK(benchfs_close(fd) == 0);
    /* Larger than the servers' chunk stores hold (64 KiB in the test cluster). */
    CHECK(benchfs_set_chunk_size(1 << 20) == 0);
    CHECK_ERR(benchfs_create("/chunked3", O_WRONLY, 0644), EINVAL);
    CHECK(benchfs_stat("/chunked", &st) == 0 && st.st_blksize == 1 << 16 &&
          st.st_size == (off_t)sizeof data);
    fd = benchfs_open("/chunked", O_RDONLY, 0);
    CHECK(benchfs_pread(fd, back, sizeof back, 0) == (ssize_t)sizeof back);
    CHECK(memcmp(back, data, sizeof data) == 0);
    CHECK(benchfs_close(fd) == 0);
    CHECK(benchfs_unlink("/chunked") == 0 && benchfs_unlink("/chunked2") == 0);
    CHECK(benchfs_set_chunk_size(0) == 0);
}

enum { THREADS = 4, THREAD_LEN = 3 * 1024 * 1024 + 4321 };

struct worker {
    int index;
    int foreign_fd;
    int failed;
};

static void *thread_main(void *arg)
{
    struct worker *w = arg;
    char path[64];
    unsigned char *data = malloc(THREAD_LEN), *back = malloc(THREAD_LEN);
    snprintf(path, sizeof path, "/t/file%d", w->index);
    fill(data, THREAD_LEN, 100 + w->index);
    int fd = benchfs_create(path, O_RDWR, 0600);
    w->failed |= fd < 0;
    /* Odd-sized writes that cross chunk boundaries. */
    for (size_t off = 0; off < THREAD_LEN; off += 1000003) {
        size_t n = THREAD_LEN - off < 1000003 ? THREAD_LEN - off : 1000003;
        w->failed |= benchfs_pwrite(fd, data + off, n, off) != (ssize_t)n;
    }
    w->failed |= benchfs_close(fd) != 0;
    fd = benchfs_open(path, O_RDONLY, 0);
    memset(back, 0, THREAD_LEN);
    w->failed |= benchfs_read(fd, back, THREAD_LEN) != THREAD_LEN;
    w->failed |= memcmp(back, data, THREAD_LEN) != 0;
    w->failed |= benchfs_close(fd) != 0;
    /* A descriptor opened on another thread is not this thread's. */
    errno = 0;
    w->failed |= !(benchfs_pread(w->foreign_fd, back, 1, 0) == -1 && errno == EBADF);
    w->failed |= benchfs_unlink(path) != 0;
    free(data);
    free(back);
    return NULL;
}

static void threads(void)
{
    pthread_t tids[THREADS];
    struct worker workers[THREADS];
    CHECK(benchfs_mkdir("/t", 0755) == 0);
    int main_fd = benchfs_create("/t/main", O_RDWR, 0644);
    CHECK(main_fd >= 0);
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){i, main_fd, 0};
        CHECK(pthread_create(&tids[i], NULL, thread_main, &workers[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(tids[i], NULL) == 0);
        CHECK(!workers[i].failed);
    }
    CHECK(benchfs_close(main_fd) == 0);
    CHECK(benchfs_unlink("/t/main") == 0);
    CHECK(benchfs_rmdir("/t") == 0);
}

static void *write_and_exit(void *arg)
{
    (void)arg;
    int fd = benchfs_create("/left-open", O_WRONLY, 0644);
    if (fd < 0 || benchfs_pwrite(fd, "12345", 5, 0) != 5) {
        return (void *)1;
    }
    return NULL; /* without benchfs_close: the thread's exit closes it */
}

/* Writes that returned keep their bytes and size when the descriptors are left open
 * across a second benchfs_init() or by a thread that exits. */
static void open_descriptors_outlive_their_client(void)
{
    static unsigned char big[100000];
    struct stat st;
    fill(big, sizeof big, 7);
    int small = benchfs_create("/reinit-small", O_WRONLY, 0644);
    int large = benchfs_create("/reinit-large", O_WRONLY, 0644);
    CHECK(small >= 0 && large >= 0);
    CHECK(benchfs_pwrite(small, "abc", 3, 0) == 3);
    CHECK(benchfs_pwrite(large, big, sizeof big, 0) == (ssize_t)sizeof big);
    CHECK(benchfs_init(NULL) == 0);
    CHECK_ERR(benchfs_close(small), EBADF);
    CHECK(benchfs_stat("/reinit-small", &st) == 0 && st.st_size == 3);
    CHECK(benchfs_stat("/reinit-large", &st) == 0 && st.st_size == (off_t)sizeof big);
    static unsigned char back[100000];
    int fd = benchfs_open("/reinit-large", O_RDONLY, 0);
    CHECK(fd >= 0 && benchfs_pread(fd, back, sizeof back, 0) == (ssize_t)sizeof back);
    CHECK(memcmp(back, big, sizeof big) == 0);
    CHECK(benchfs_close(fd) == 0);
    pthread_t tid;
    void *failed = NULL;
    CHECK(pthread_create(&tid, NULL, write_and_exit, NULL) == 0);
    CHECK(pthread_join(tid, &failed) == 0 && failed == NULL);
    CHECK(benchfs_stat("/left-open", &st) == 0 && st.st_size == 5);
    CHECK(benchfs_unlink("/reinit-small") == 0 && benchfs_unlink("/reinit-large") == 0);
    CHECK(benchfs_unlink("/left-open") == 0);
}

/* Creates and mkdirs leave out the umask the process had at benchfs_init(), as open(2)
 * and mkdir(2) do (a review found files made 0666 whatever the umask). */
static void umask_applies(void)
{
    struct stat st;
    int fd = benchfs_open("/masked", O_CREAT | O_WRONLY, 0666);
    CHECK(fd >= 0 && benchfs_close(fd) == 0);
    CHECK(benchfs_stat("/masked", &st) == 0 && (st.st_mode & 0777) == 0640);
    CHECK(benchfs_mkdir("/masked-dir", 0777) == 0);
    CHECK(benchfs_stat("/masked-dir", &st) == 0 && (st.st_mode & 0777) == 0750);
    CHECK(benchfs_unlink("/masked") == 0 && benchfs_rmdir("/masked-dir") == 0);
}

/* A registry holding something other than servers' entries is EINVAL, naming the file. */
static void malformed_registries(void)
{
    char dir[] = "/tmp/benchfs-capi-registry-XXXXXX", path[sizeof dir + 32];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/junk.addr", dir);
    FILE *junk = fopen(path, "w");
    CHECK(junk != NULL && fputs("garbage\n", junk) >= 0 && fclose(junk) == 0);
    CHECK_ERR(benchfs_init(dir), EINVAL);
    CHECK(strstr(benchfs_last_error(), "junk.addr") != NULL);
    CHECK(unlink(path) == 0);
    snprintf(path, sizeof path, "%s/node8.addr", dir);
    CHECK(mkdir(path, 0755) == 0);
    CHECK_ERR(benchfs_init(dir), EINVAL);
    CHECK(strstr(benchfs_last_error(), "node8.addr") != NULL);
    CHECK(rmdir(path) == 0);
    CHECK_ERR(benchfs_init(dir), ENOENT);
    /* Servers that disagree: the init fails after reading them, and leaves nothing set
     * up (a review found setters then answering EBUSY). */
    const char *entries[][2] = {{"node0.addr", "node0 127.0.0.1:1 replicas=1\n"},
                                {"node1.addr", "node1 127.0.0.1:2 replicas=2\n"}};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, entries[i][0]);
        FILE *entry = fopen(path, "w");
        CHECK(entry != NULL && fputs(entries[i][1], entry) >= 0 && fclose(entry) == 0);
    }
    CHECK_ERR(benchfs_init(dir), EINVAL);
    CHECK(strstr(benchfs_last_error(), "disagree") != NULL);
    CHECK(benchfs_set_rpc_timeout_msec(20000) == 0);
    struct stat st;
    CHECK_ERR(benchfs_stat("/", &st), ENOTCONN);
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, entries[i][0]);
        CHECK(unlink(path) == 0);
    }
    CHECK(rmdir(dir) == 0);
}

int main(void)
{
    struct stat st;
    CHECK_ERR(benchfs_stat("/", &st), ENOTCONN);
    CHECK(benchfs_set_rpc_timeout_msec(20000) == 0);
    CHECK_ERR(benchfs_set_rpc_timeout_msec(-1), EINVAL);
    CHECK(benchfs_init(NULL) == 0);
    files_and_errors();
    settings();
    threads();
    open_descriptors_outlive_their_client();
    CHECK(benchfs_term() == 0);
    CHECK_ERR(benchfs_stat("/", &st), ENOTCONN);
    umask(027);
    CHECK(benchfs_init(getenv("BENCHFS_REGISTRY")) == 0);
    CHECK(benchfs_stat("/", &st) == 0 && S_ISDIR(st.st_mode));
    umask_applies();
    CHECK(benchfs_term() == 0);
    CHECK_ERR(benchfs_init("/nonexistent/registry"), ENOENT);
    malformed_registries();
    printf("%d checks, %d failed\n", checks, failures);
    return failures != 0;
}
