/*
 * IOR and mdtest backend for BenchFS (-a BENCHFS), through libbenchfs.
 *
 * Options:
 *   --benchfs.registry=DIR     registry of the servers (default: $BENCHFS_REGISTRY)
 *   --benchfs.chunk_size=N     chunk size of files created, bytes or with a k, m or g
 *                              suffix (default, or 0: the servers')
 *
 * Paths are BenchFS paths (-o /ior.dat, -d /mdtest). Each rank is one BenchFS client.
 * Copy into IOR's src/ with scripts/build-ior.sh, which also registers it.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <benchfs.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "aiori.h"
#include "ior.h"
#include "utilities.h"

struct benchfs_options {
    char *registry;
    char *chunk_size;
};

struct benchfs_file {
    int fd;
};

static aiori_xfer_hint_t *hints;

static option_help *BENCHFS_options(aiori_mod_opt_t **backend_options,
                                    aiori_mod_opt_t *init_values)
{
    struct benchfs_options *o = calloc(1, sizeof(*o));
    if (init_values != NULL)
        memcpy(o, init_values, sizeof(*o));
    *backend_options = (aiori_mod_opt_t *)o;

    option_help h[] = {
        {0, "benchfs.registry", "Registry directory of the BenchFS servers", OPTION_OPTIONAL_ARGUMENT,
         's', &o->registry},
        {0, "benchfs.chunk_size", "Chunk size of created files, bytes or with k, m, g (0: the servers')",
         OPTION_OPTIONAL_ARGUMENT, 's', &o->chunk_size},
        LAST_OPTION};
    option_help *help = malloc(sizeof(h));
    memcpy(help, h, sizeof(h));
    return help;
}

static void BENCHFS_xfer_hints(aiori_xfer_hint_t *params)
{
    hints = params;
}

/* Bytes from "N", "Nk", "Nm" or "Ng" (powers of 1024); -1 for anything else. IOR's own
 * integer options read "abc" as 0 and overflow to any value, so this one is a string. */
static long long parse_size(const char *text)
{
    char *end;
    unsigned long long n;
    unsigned shift = 0;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    errno = 0;
    n = strtoull(text, &end, 10);
    if (errno != 0)
        return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    }
    if (*end != '\0' || n > ((unsigned long long)LLONG_MAX >> shift))
        return -1;
    return (long long)(n << shift);
}

static void BENCHFS_initialize(aiori_mod_opt_t *options)
{
    struct benchfs_options *o = (struct benchfs_options *)options;
    if (o != NULL && o->chunk_size != NULL) {
        long long bytes = parse_size(o->chunk_size);
        if (bytes < 0)
            ERRF("--benchfs.chunk_size=%s: not a size (bytes, or with a k, m or g suffix)",
                 o->chunk_size);
        if (bytes > 0 && benchfs_set_chunk_size((size_t)bytes) != 0)
            ERRF("--benchfs.chunk_size=%s: %s", o->chunk_size, benchfs_last_error());
    }
    if (benchfs_init(o != NULL ? o->registry : NULL) != 0)
        ERRF("benchfs_init: %s", benchfs_last_error());
}

static void BENCHFS_finalize(aiori_mod_opt_t *options)
{
    (void)options;
    if (benchfs_term() != 0)
        WARNF("benchfs_term: %s", benchfs_last_error());
}

/* IOR's open flags as open(2)'s. */
static int posix_flags(int iorflags)
{
    int flags = 0;
    if (iorflags & IOR_RDWR)
        flags |= O_RDWR;
    else if (iorflags & IOR_WRONLY)
        flags |= O_WRONLY;
    else
        flags |= O_RDONLY;
    if (iorflags & IOR_APPEND)
        flags |= O_APPEND;
    if (iorflags & IOR_CREAT)
        flags |= O_CREAT;
    if (iorflags & IOR_TRUNC)
        flags |= O_TRUNC;
    if (iorflags & IOR_EXCL)
        flags |= O_EXCL;
    return flags;
}

static aiori_fd_t *open_file(const char *op, char *path, int flags)
{
    if (hints->dryRun)
        return NULL;
    int fd = benchfs_open(path, flags, 0664);
    if (fd < 0)
        ERRF("%s %s: %s", op, path, benchfs_last_error());
    struct benchfs_file *f = malloc(sizeof(*f));
    f->fd = fd;
    return (aiori_fd_t *)f;
}

static aiori_fd_t *BENCHFS_create(char *path, int iorflags, aiori_mod_opt_t *options)
{
    (void)options;
    /* Read and write, whatever IOR asks, as its POSIX backend creates: mdtest
     * --verify-write reads back through the handle it wrote with. */
    int flags = (posix_flags(iorflags) & ~O_ACCMODE) | O_RDWR | O_CREAT;
    if (hints->dryRun || hints->filePerProc || !(flags & O_TRUNC))
        return open_file("create", path, flags);
    /* One shared file, created by every rank with O_TRUNC: a rank whose open came
     * after another rank's first writes would cut them. Rank 0 creates and cuts; the
     * others open once it has (as IOR's POSIX backend does for Lustre striping). */
    aiori_fd_t *file = NULL;
    if (rank == 0)
        file = open_file("create", path, flags);
    MPI_CHECK(MPI_Barrier(testComm), "barrier error");
    if (rank != 0)
        file = open_file("open", path, flags & ~O_TRUNC);
    return file;
}

static aiori_fd_t *BENCHFS_open(char *path, int iorflags, aiori_mod_opt_t *options)
{
    (void)options;
    return open_file("open", path, posix_flags(iorflags));
}

static IOR_offset_t BENCHFS_xfer(int access, aiori_fd_t *file, IOR_size_t *buffer,
                                 IOR_offset_t length, IOR_offset_t offset,
                                 aiori_mod_opt_t *options)
{
    (void)options;
    if (hints->dryRun)
        return length;
    struct benchfs_file *f = (struct benchfs_file *)file;
    char *bytes = (char *)buffer;
    IOR_offset_t done = 0;
    /* One call moves at most 0x7ffff000 bytes, as Linux's: a larger transfer takes more. */
    while (done < length) {
        ssize_t n = access == WRITE
                        ? benchfs_pwrite(f->fd, bytes + done, length - done, offset + done)
                        : benchfs_pread(f->fd, bytes + done, length - done, offset + done);
        if (n < 0) {
            WARNF("%s of %lld bytes at %lld: %s", access == WRITE ? "write" : "read",
                  (long long)(length - done), (long long)(offset + done),
                  benchfs_last_error());
            return n;
        }
        if (n == 0)
            break;
        done += n;
    }
    return done;
}

static void BENCHFS_close(aiori_fd_t *file, aiori_mod_opt_t *options)
{
    (void)options;
    if (hints->dryRun)
        return;
    struct benchfs_file *f = (struct benchfs_file *)file;
    if (benchfs_close(f->fd) != 0)
        ERRF("close: %s", benchfs_last_error());
    free(f);
}

static void BENCHFS_delete(char *path, aiori_mod_opt_t *options)
{
    (void)options;
    if (hints->dryRun)
        return;
    if (benchfs_unlink(path) != 0)
        WARNF("unlink %s: %s", path, benchfs_last_error());
}

static char *BENCHFS_version(void)
{
    return "BenchFS";
}

static void BENCHFS_fsync(aiori_fd_t *file, aiori_mod_opt_t *options)
{
    (void)options;
    if (hints->dryRun)
        return;
    struct benchfs_file *f = (struct benchfs_file *)file;
    if (benchfs_fsync(f->fd) != 0)
        ERRF("fsync: %s", benchfs_last_error());
}

static IOR_offset_t BENCHFS_get_file_size(aiori_mod_opt_t *options, char *path)
{
    (void)options;
    struct stat st;
    if (hints->dryRun)
        return 0;
    if (benchfs_stat(path, &st) != 0)
        ERRF("stat %s: %s", path, benchfs_last_error());
    return st.st_size;
}

/* As IOR's POSIX backend: the file system of the path's directory, since IOR asks before
 * it creates its test file. */
static int BENCHFS_statfs(const char *path, ior_aiori_statfs_t *st, aiori_mod_opt_t *options)
{
    (void)options;
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t len = slash == NULL || slash == path ? 1 : (size_t)(slash - path);
    if (len >= sizeof(dir))
        return -1;
    memcpy(dir, slash == NULL ? "/" : path, len);
    dir[len] = '\0';
    struct statvfs vfs;
    if (benchfs_statvfs(dir, &vfs) != 0) {
        WARNF("statfs %s: %s", dir, benchfs_last_error());
        return -1;
    }
    st->f_bsize = vfs.f_frsize;
    st->f_blocks = vfs.f_blocks;
    st->f_bfree = vfs.f_bfree;
    st->f_bavail = vfs.f_bavail;
    st->f_files = vfs.f_files;
    st->f_ffree = vfs.f_ffree;
    return 0;
}

static int BENCHFS_mkdir(const char *path, mode_t mode, aiori_mod_opt_t *options)
{
    (void)options;
    return hints->dryRun ? 0 : benchfs_mkdir(path, mode);
}

static int BENCHFS_rmdir(const char *path, aiori_mod_opt_t *options)
{
    (void)options;
    return hints->dryRun ? 0 : benchfs_rmdir(path);
}

static int BENCHFS_access(const char *path, int mode, aiori_mod_opt_t *options)
{
    (void)options;
    return hints->dryRun ? 0 : benchfs_access(path, mode);
}

static int BENCHFS_stat(const char *path, struct stat *buf, aiori_mod_opt_t *options)
{
    (void)options;
    return hints->dryRun ? 0 : benchfs_stat(path, buf);
}

static int BENCHFS_rename(const char *from, const char *to, aiori_mod_opt_t *options)
{
    (void)options;
    return hints->dryRun ? 0 : benchfs_rename(from, to);
}

static void BENCHFS_sync(aiori_mod_opt_t *options)
{
    (void)options;
}

ior_aiori_t benchfs_aiori = {
    .name = "BENCHFS",
    .name_legacy = NULL,
    .create = BENCHFS_create,
    .open = BENCHFS_open,
    .xfer_hints = BENCHFS_xfer_hints,
    .xfer = BENCHFS_xfer,
    .close = BENCHFS_close,
    .delete = BENCHFS_delete,
    .get_version = BENCHFS_version,
    .fsync = BENCHFS_fsync,
    .get_file_size = BENCHFS_get_file_size,
    .statfs = BENCHFS_statfs,
    .mkdir = BENCHFS_mkdir,
    .rmdir = BENCHFS_rmdir,
    .access = BENCHFS_access,
    .stat = BENCHFS_stat,
    .rename = BENCHFS_rename,
    .initialize = BENCHFS_initialize,
    .finalize = BENCHFS_finalize,
    .get_options = BENCHFS_options,
    .sync = BENCHFS_sync,
    .enable_mdtest = true,
};
