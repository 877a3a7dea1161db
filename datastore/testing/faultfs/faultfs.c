/* faultfs: an LD_PRELOAD shim that models what survives a power loss, and injects disk faults.
 *
 * Model (the one Jepsen's LazyFS uses): file *content* is durable only up to the last
 * successful fsync/fdatasync of that file; namespace operations (create, rename, link,
 * unlink, mkdir) are treated as durable at once. On every successful fsync/fdatasync of a
 * regular file under FAULTFS_ROOT, the file's whole content is copied to the same relative
 * path under FAULTFS_SHADOW; renames, links and unlinks under the root are mirrored there.
 * After the processes are SIGKILLed, datastore.testing.faultfs.pull_plug() rewrites every
 * file of the root from the shadow (a never-synced file becomes empty): the data dir a
 * machine would find after losing power with nothing but the page cache lost.
 *
 * Faults (all limited to fds/paths under FAULTFS_ROOT):
 *   FAULTFS_EIO_AFTER=N   the first N fsync/fdatasync calls succeed, every later one
 *                         fails with EIO (sticky, like a disk that went bad).
 *   FAULTFS_EIO_FLAG=P    with FAULTFS_EIO_AFTER: count only the calls made while the
 *                         file P exists (so a test arms the fault once the member is up).
 *   FAULTFS_ENOSPC_FLAG=P while the file P exists, write/pwrite/writev/fallocate/ftruncate
 *                         fail with ENOSPC (the test creates/removes P to fill/free the disk).
 *   FAULTFS_STALL_FLAG=P  while the file P exists, fsync/fdatasync block (a stalled disk).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char g_root[PATH_MAX];   /* absolute, no trailing slash; "" = shim inactive */
static char g_shadow[PATH_MAX];
static char g_enospc[PATH_MAX];
static char g_stall[PATH_MAX];  /* FAULTFS_STALL_FLAG */
static char g_eio_flag[PATH_MAX];
static long g_eio_after = -1;   /* -1: never */
static long g_syncs;            /* fsync/fdatasync calls under the root so far */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_posix_fallocate)(int, off_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_link)(const char *, const char *);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rmdir)(const char *);

#define LOAD(name) real_##name = dlsym(RTLD_NEXT, #name)

static void shim_log(const char *what, const char *detail) {
    char buf[PATH_MAX + 128];
    int n = snprintf(buf, sizeof buf, "faultfs: %s %s\n", what, detail);
    if (n > 0 && real_write) real_write(2, buf, (size_t)n);
}

/* realpath of the parent + the last component: works for paths that do not exist yet */
static void resolve(const char *in, char *out) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", in);
    char *slash = strrchr(tmp, '/');
    char parent[PATH_MAX];
    const char *base;
    if (slash == NULL) { snprintf(parent, sizeof parent, "."); base = tmp; }
    else if (slash == tmp) { snprintf(parent, sizeof parent, "/"); base = slash + 1; }
    else { *slash = 0; snprintf(parent, sizeof parent, "%s", tmp); base = slash + 1; }
    char rp[PATH_MAX];
    if (realpath(parent, rp) == NULL) { snprintf(out, PATH_MAX, "%s", in); return; }
    if (strcmp(rp, "/") == 0) snprintf(out, PATH_MAX, "/%s", base);
    else snprintf(out, PATH_MAX, "%s/%s", rp, base);
}

__attribute__((constructor)) static void faultfs_init(void) {
    LOAD(fsync); LOAD(fdatasync); LOAD(write); LOAD(pwrite); LOAD(pwrite64); LOAD(writev);
    LOAD(pwritev); LOAD(fallocate); LOAD(posix_fallocate); LOAD(ftruncate); LOAD(rename);
    LOAD(renameat); LOAD(renameat2); LOAD(link); LOAD(unlink); LOAD(unlinkat); LOAD(rmdir);
    const char *root = getenv("FAULTFS_ROOT"), *shadow = getenv("FAULTFS_SHADOW");
    if (root && *root && shadow && *shadow) {
        resolve(root, g_root);
        resolve(shadow, g_shadow);
    }
    const char *e = getenv("FAULTFS_ENOSPC_FLAG");
    if (e) snprintf(g_enospc, sizeof g_enospc, "%s", e);
    const char *f = getenv("FAULTFS_EIO_FLAG");
    if (f) snprintf(g_eio_flag, sizeof g_eio_flag, "%s", f);
    const char *s = getenv("FAULTFS_STALL_FLAG");
    if (s) snprintf(g_stall, sizeof g_stall, "%s", s);
    const char *n = getenv("FAULTFS_EIO_AFTER");
    if (n && *n) g_eio_after = atol(n);
}

/* If abs is under the root, write the shadow counterpart to out and return 1. */
static int shadow_of(const char *abs, char *out) {
    size_t n = strlen(g_root);
    if (!n || strncmp(abs, g_root, n) != 0 || (abs[n] != '/' && abs[n] != 0)) return 0;
    snprintf(out, PATH_MAX, "%s%s", g_shadow, abs + n);
    return 1;
}

static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n <= 0) return 0;
    out[n] = 0;
    return out[0] == '/';
}

static int fd_under_root(int fd) {
    char p[PATH_MAX], s[PATH_MAX];
    return g_root[0] && fd_path(fd, p) && shadow_of(p, s);
}

static int at_path(int dirfd, const char *path, char *out) {
    char full[PATH_MAX];
    if (path[0] == '/') snprintf(full, sizeof full, "%s", path);
    else if (dirfd == AT_FDCWD) {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd)) return 0;
        snprintf(full, sizeof full, "%s/%s", cwd, path);
    } else {
        char d[PATH_MAX];
        if (!fd_path(dirfd, d)) return 0;
        snprintf(full, sizeof full, "%s/%s", d, path);
    }
    resolve(full, out);
    return 1;
}

static void mkdirs(const char *path) { /* mkdir -p of path's parent */
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') { *p = 0; mkdir(tmp, 0700); *p = '/'; }
    }
}

/* Copy the file's current content to its shadow (called after a successful sync). */
static void persist(int fd) {
    char p[PATH_MAX], s[PATH_MAX], t[PATH_MAX];
    struct stat st;
    if (!g_root[0] || !fd_path(fd, p) || !shadow_of(p, s)) return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return; /* directories: namespace is immediate */
    if (strstr(p, " (deleted)")) return;
    pthread_mutex_lock(&g_mu);
    mkdirs(s);
    snprintf(t, sizeof t, "%s.faultfs-tmp", s);
    int in = open(p, O_RDONLY | O_CLOEXEC);
    int out = open(t, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (in >= 0 && out >= 0) {
        off_t off = 0;
        for (;;) {
            ssize_t k = sendfile(out, in, &off, 1 << 20);
            if (k <= 0) break;
        }
        real_rename(t, s);
    } else {
        shim_log("cannot persist", p);
    }
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    pthread_mutex_unlock(&g_mu);
}

static int sync_common(int fd, int (*real)(int)) {
    if (g_stall[0] && fd_under_root(fd)) {
        int logged = 0;
        while (access(g_stall, F_OK) == 0) {
            if (!logged++) shim_log("stalling fsync", "");
            usleep(10000);
        }
    }
    if (g_root[0] && g_eio_after >= 0 && fd_under_root(fd) &&
            (!g_eio_flag[0] || g_syncs > 0 || access(g_eio_flag, F_OK) == 0)) {
        pthread_mutex_lock(&g_mu);
        long k = ++g_syncs;
        pthread_mutex_unlock(&g_mu);
        if (k > g_eio_after) {
            if (k == g_eio_after + 1) shim_log("injecting EIO from fsync call", "");
            errno = EIO;
            return -1;
        }
    }
    int r = real(fd);
    if (r == 0) persist(fd);
    return r;
}

int fsync(int fd) { return sync_common(fd, real_fsync); }
int fdatasync(int fd) { return sync_common(fd, real_fdatasync); }

static int disk_full(int fd) {
    return g_enospc[0] && access(g_enospc, F_OK) == 0 && fd_under_root(fd);
}

ssize_t write(int fd, const void *b, size_t n) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_write(fd, b, n);
}
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_pwrite(fd, b, n, o);
}
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_pwrite64(fd, b, n, o);
}
ssize_t writev(int fd, const struct iovec *v, int c) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_writev(fd, v, c);
}
ssize_t pwritev(int fd, const struct iovec *v, int c, off_t o) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_pwritev(fd, v, c, o);
}
int fallocate(int fd, int mode, off_t o, off_t l) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_fallocate(fd, mode, o, l);
}
int posix_fallocate(int fd, off_t o, off_t l) {
    if (disk_full(fd)) return ENOSPC;
    return real_posix_fallocate(fd, o, l);
}
int ftruncate(int fd, off_t l) {
    if (disk_full(fd)) { errno = ENOSPC; return -1; }
    return real_ftruncate(fd, l);
}

/* ---- namespace operations: mirrored in the shadow at once -------------------------- */
static void shadow_rename(const char *from_abs, const char *to_abs) {
    char a[PATH_MAX], b[PATH_MAX];
    int fa = shadow_of(from_abs, a), fb = shadow_of(to_abs, b);
    if (!fb) return;
    pthread_mutex_lock(&g_mu);
    if (fa && access(a, F_OK) == 0) { mkdirs(b); real_rename(a, b); }
    else real_unlink(b); /* the target now names a file with nothing synced */
    pthread_mutex_unlock(&g_mu);
}

int renameat2(int od, const char *o, int nd, const char *n, unsigned int flags) {
    char a[PATH_MAX], b[PATH_MAX];
    int ok = g_root[0] && at_path(od, o, a) && at_path(nd, n, b);
    int r = real_renameat2(od, o, nd, n, flags);
    if (r == 0 && ok) shadow_rename(a, b);
    return r;
}
int renameat(int od, const char *o, int nd, const char *n) {
    char a[PATH_MAX], b[PATH_MAX];
    int ok = g_root[0] && at_path(od, o, a) && at_path(nd, n, b);
    int r = real_renameat(od, o, nd, n);
    if (r == 0 && ok) shadow_rename(a, b);
    return r;
}
int rename(const char *o, const char *n) {
    char a[PATH_MAX], b[PATH_MAX];
    int ok = g_root[0] && at_path(AT_FDCWD, o, a) && at_path(AT_FDCWD, n, b);
    int r = real_rename(o, n);
    if (r == 0 && ok) shadow_rename(a, b);
    return r;
}
int link(const char *o, const char *n) {
    char a[PATH_MAX], b[PATH_MAX], sa[PATH_MAX], sb[PATH_MAX];
    int ok = g_root[0] && at_path(AT_FDCWD, o, a) && at_path(AT_FDCWD, n, b);
    int r = real_link(o, n);
    if (r == 0 && ok && shadow_of(a, sa) && shadow_of(b, sb) && access(sa, F_OK) == 0) {
        pthread_mutex_lock(&g_mu);
        mkdirs(sb);
        real_link(sa, sb);
        pthread_mutex_unlock(&g_mu);
    }
    return r;
}
static void shadow_remove(const char *abs, int dir) {
    char s[PATH_MAX];
    if (!shadow_of(abs, s)) return;
    pthread_mutex_lock(&g_mu);
    if (dir) real_rmdir(s); else real_unlink(s);
    pthread_mutex_unlock(&g_mu);
}
int unlink(const char *p) {
    char a[PATH_MAX];
    int ok = g_root[0] && at_path(AT_FDCWD, p, a);
    int r = real_unlink(p);
    if (r == 0 && ok) shadow_remove(a, 0);
    return r;
}
int unlinkat(int d, const char *p, int flags) {
    char a[PATH_MAX];
    int ok = g_root[0] && at_path(d, p, a);
    int r = real_unlinkat(d, p, flags);
    if (r == 0 && ok) shadow_remove(a, flags & AT_REMOVEDIR);
    return r;
}
int rmdir(const char *p) {
    char a[PATH_MAX];
    int ok = g_root[0] && at_path(AT_FDCWD, p, a);
    int r = real_rmdir(p);
    if (r == 0 && ok) shadow_remove(a, 1);
    return r;
}
