// File access: read-only maps of model files, whole-file reads for small text files,
// and atomic writes (temporary name in the same directory, fsync, rename, fsync of the
// directory) so that a crash never leaves a half-written file under the real name.
#ifndef LLAMA_AO_COMMON_FILEIO_H
#define LLAMA_AO_COMMON_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const unsigned char *data;  // NULL for an empty file
    size_t size;
    int fd;
} MappedFile;

// 1 on success; 0 with a message in err (names the path and the OS reason).
int map_file(const char *path, MappedFile *mf, char *err, size_t errlen);
void unmap_file(MappedFile *mf);

// Reads a whole file into a NUL-terminated buffer (caller frees). Refuses files larger
// than max_bytes. 1 on success, 0 with a message in err.
int read_file_all(const char *path, size_t max_bytes, char **out, size_t *out_len, char *err, size_t errlen);

int file_exists(const char *path);
int dir_exists(const char *path);
// Creates a directory and its parents (mode 0755). 1 on success.
int make_dirs(const char *path);

// Atomic writer: fopen's a temporary sibling of `path`; atomic_close flushes, fsyncs
// and renames it over `path`. atomic_abort removes the temporary.
typedef struct {
    FILE *f;
    char *path;
    char *tmp_path;
} AtomicFile;
int atomic_open(AtomicFile *af, const char *path, char *err, size_t errlen);
int atomic_close(AtomicFile *af, char *err, size_t errlen);
void atomic_abort(AtomicFile *af);

// path joining into a fresh allocation: "dir/name"
char *path_join(const char *dir, const char *name);

#ifdef __cplusplus
}
#endif
#endif
