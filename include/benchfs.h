/*
 * benchfs.h: the BenchFS client for C programs (libbenchfs).
 *
 * Link with `pkg-config --cflags --libs benchfs` (shared) or
 * `pkg-config --static --cflags --libs benchfs` (static).
 *
 * Errors: every function that returns int, ssize_t or off_t returns -1 on failure with
 * errno set to the POSIX value (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, ENOSPC, EIO,
 * ETIMEDOUT, EBADF, EACCES, ESTALE, ...); benchfs_last_error() gives the message, which
 * names the path and the server.
 *
 * Threads: any thread may call any function. Each thread gets its own client (its own
 * connection to the servers), made at its first call after benchfs_init(); the
 * configuration and the list of servers read by benchfs_init() are shared. A descriptor
 * belongs to the thread that opened it: using it from another thread fails with EBADF.
 * Close descriptors (or call benchfs_term()) before a thread exits: a file's size is
 * published when its descriptor is closed or fsynced. A readdir filler may call the API.
 *
 * fork(): the child cannot use BenchFS (its transport, UCX, does not survive a fork):
 * every call there fails with ENOTSUP, and the child may exit or exec as it likes. The
 * parent goes on as before. A program the child execs may call benchfs_init().
 *
 * Paths are absolute ("/dir/file") and UTF-8; a name is at most 255 bytes.
 */
#ifndef BENCHFS_H
#define BENCHFS_H

#include <stddef.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Set-up. */

/* Connects to the servers published in `registry` (NULL: $BENCHFS_REGISTRY, else the
 * configuration's registry_dir). Reads the configuration file $BENCHFS_CONFIG (if set),
 * BENCHFS_<SECTION>_<KEY> overrides, $BENCHFS_CHUNK_SIZE, $BENCHFS_RDMA_THRESH,
 * $BENCHFS_RPC_TIMEOUT_MSEC and the job secret in $BENCHFS_SECRET_FILE; values given to
 * the setters below before this call win over the environment. Calling it again
 * reconnects every thread, each at its next call, which first closes the descriptors the
 * thread had open (publishing their sizes, as benchfs_close() does; later calls on them
 * fail with EBADF). Descriptors a thread leaves open when it exits are closed so too.
 * Fails with ENOENT when the registry is missing or lists no server, EINVAL when a
 * `*.addr` file in it is no server's entry (the message names it). */
int benchfs_init(const char *registry);
/* Closes the calling thread's descriptors and connection and forgets the settings;
 * other threads' next calls close their descriptors and fail with ENOTCONN until
 * benchfs_init() is called again. */
int benchfs_term(void);
/* The calling thread's last error message ("" if none); valid until its next failure. */
const char *benchfs_last_error(void);

/* Chunk size of files created from now on: a power of two from 4 KiB up to the servers'
 * configured chunk size (a create asking for more fails with EINVAL), or 0
 * for the servers' configured size. May be called at any time. */
int benchfs_set_chunk_size(size_t bytes);
/* Payloads above this size move by rendezvous (RDMA). Before benchfs_init() only. */
int benchfs_set_rdma_thresh(size_t bytes);
/* How long a call waits for a server. Before benchfs_init() only. */
int benchfs_set_rpc_timeout_msec(int msec);

/* Files. flags as open(2): O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC,
 * O_APPEND, O_DIRECTORY (others are ignored). Descriptors are BenchFS's own, not the
 * kernel's. A file or directory made takes mode less the process's umask as it was at
 * benchfs_init(), as open(2) and mkdir(2) do. */
int benchfs_create(const char *path, int flags, mode_t mode); /* flags|O_CREAT|O_TRUNC */
int benchfs_open(const char *path, int flags, mode_t mode);
int benchfs_close(int fd);
/* One call moves at most 0x7ffff000 bytes, as Linux's read(2) and write(2); the count
 * returned says how many. */
ssize_t benchfs_pwrite(int fd, const void *buf, size_t size, off_t offset);
ssize_t benchfs_write(int fd, const void *buf, size_t size);
ssize_t benchfs_pread(int fd, void *buf, size_t size, off_t offset);
ssize_t benchfs_read(int fd, void *buf, size_t size);
off_t benchfs_seek(int fd, off_t offset, int whence); /* SEEK_SET, SEEK_CUR, SEEK_END */
int benchfs_fsync(int fd);
int benchfs_truncate(const char *path, off_t length);
int benchfs_ftruncate(int fd, off_t length);
int benchfs_unlink(const char *path);
int benchfs_rename(const char *from, const char *to);

/* Metadata. st_blksize is the file's chunk size; uid and gid are the owner and group
 * the file's record holds: its creator's, unless changed since (chown through a mount). */
int benchfs_stat(const char *path, struct stat *st);
int benchfs_fstat(int fd, struct stat *st);
/* The size and room of the file system `path` lies in (`path` must exist): what the
 * servers hold and have free, over the replica count; f_files counts records in use plus
 * f_ffree, as records are not bounded. */
int benchfs_statvfs(const char *path, struct statvfs *st);
/* F_OK, or R_OK | W_OK | X_OK checked against the owner's permission bits. */
int benchfs_access(const char *path, int mode);

/* Directories. */
int benchfs_mkdir(const char *path, mode_t mode);
int benchfs_rmdir(const char *path);
/* Calls filler(ctx, name, st, 0) once per entry ("." and ".." are not listed); a
 * non-zero return from filler stops the listing. */
typedef int (*benchfs_filler_t)(void *ctx, const char *name, const struct stat *st,
                                off_t offset);
int benchfs_readdir(const char *path, void *ctx, benchfs_filler_t filler);

#ifdef __cplusplus
}
#endif

#endif /* BENCHFS_H */
