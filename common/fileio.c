#define _GNU_SOURCE
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

int map_file(const char *path, MappedFile *mf, char *err, size_t errlen) {
    memset(mf, 0, sizeof *mf);
    mf->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno)); return 0; }
    struct stat st;
    if (fstat(fd, &st) != 0) { snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno)); close(fd); return 0; }
    if (!S_ISREG(st.st_mode)) { snprintf(err, errlen, "%s is not a regular file", path); close(fd); return 0; }
    mf->size = (size_t)st.st_size;
    mf->fd = fd;
    if (mf->size == 0) return 1;
    void *p = mmap(NULL, mf->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) { snprintf(err, errlen, "cannot map %s: %s", path, strerror(errno)); close(fd); mf->fd = -1; return 0; }
    mf->data = p;
    return 1;
}

void unmap_file(MappedFile *mf) {
    if (mf->data) munmap((void *)mf->data, mf->size);
    if (mf->fd >= 0) close(mf->fd);
    mf->data = NULL;
    mf->size = 0;
    mf->fd = -1;
}

int read_file_all(const char *path, size_t max_bytes, char **out, size_t *out_len, char *err, size_t errlen) {
    *out = NULL;
    *out_len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno)); return 0; }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
        fclose(f);
        return 0;
    }
    if ((unsigned long long)st.st_size > (unsigned long long)max_bytes) {
        snprintf(err, errlen, "%s is %lld bytes, more than the %zu allowed for this kind of file", path,
                 (long long)st.st_size, max_bytes);
        fclose(f);
        return 0;
    }
    size_t n = (size_t)st.st_size;
    char *buf = ao_malloc(n + 1);
    if (n && fread(buf, 1, n, f) != n) {
        snprintf(err, errlen, "short read on %s", path);
        free(buf);
        fclose(f);
        return 0;
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    *out_len = n;
    return 1;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int make_dirs(const char *path) {
    char *p = ao_strdup(path);
    size_t n = strlen(p);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] == '/' || p[i] == 0) {
            char c = p[i];
            p[i] = 0;
            if (p[0] && mkdir(p, 0755) != 0 && errno != EEXIST) { free(p); return 0; }
            p[i] = c;
        }
    }
    free(p);
    return dir_exists(path);
}

char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *s = ao_malloc(a + b + 2);
    memcpy(s, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') s[k++] = '/';
    memcpy(s + k, name, b + 1);
    return s;
}

int atomic_open(AtomicFile *af, const char *path, char *err, size_t errlen) {
    memset(af, 0, sizeof *af);
    af->path = ao_strdup(path);
    size_t n = strlen(path) + 32;
    af->tmp_path = ao_malloc(n);
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        snprintf(err, errlen, "cannot create %s: %s", af->tmp_path, strerror(errno));
        free(af->path);
        free(af->tmp_path);
        af->path = af->tmp_path = NULL;
        return 0;
    }
    return 1;
}

static void fsync_parent(const char *path) {
    char *d = ao_strdup(path);
    int fd = open(dirname(d), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { fsync(fd); close(fd); }
    free(d);
}

int atomic_close(AtomicFile *af, char *err, size_t errlen) {
    int ok = 1;
    if (fflush(af->f) != 0 || ferror(af->f)) {
        snprintf(err, errlen, "write to %s failed: %s", af->tmp_path, strerror(errno));
        ok = 0;
    } else if (fsync(fileno(af->f)) != 0) {
        snprintf(err, errlen, "fsync of %s failed: %s", af->tmp_path, strerror(errno));
        ok = 0;
    }
    if (fclose(af->f) != 0 && ok) { snprintf(err, errlen, "close of %s failed: %s", af->tmp_path, strerror(errno)); ok = 0; }
    af->f = NULL;
    if (ok && rename(af->tmp_path, af->path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", af->tmp_path, af->path, strerror(errno));
        ok = 0;
    }
    if (!ok) unlink(af->tmp_path);
    else fsync_parent(af->path);
    free(af->path);
    free(af->tmp_path);
    af->path = af->tmp_path = NULL;
    return ok;
}

void atomic_abort(AtomicFile *af) {
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}
