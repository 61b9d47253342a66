// safetensors read (mmap, single file or sharded with model.safetensors.index.json) and
// write (atomic). The reader trusts nothing in the file: header length bounded by the
// file and by ST_MAX_HEADER, strict JSON with no duplicate names, known dtypes only,
// shapes whose byte size (overflow-checked) equals the data range, ranges inside the
// file, contiguous and non-overlapping, covering the data section exactly.
#ifndef LLAMA_AO_MODEL_SAFETENSORS_H
#define LLAMA_AO_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/fileio.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_MAX_HEADER (100u << 20)  // the limit the reference implementation uses
#define ST_MAX_DIMS 8

typedef enum {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_F8_E4M3, ST_F8_E5M2, ST_NDTYPES
} StDtype;

const char *st_dtype_name(StDtype d);
size_t st_dtype_size(StDtype d);
// -1 when the name is unknown.
int st_dtype_from_name(const char *s);

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data;  // points into the mapping; may be unaligned
    int file;          // index into SafeTensors.files
} StTensor;

typedef struct {
    MappedFile *files;
    char **file_names;
    int n_files;
    StTensor *tensors;  // sorted by name
    int n;
    char **meta_keys, **meta_vals;  // __metadata__ of the first file
    int n_meta;
} SafeTensors;

// Opens one .safetensors file. 1 on success; 0 with a message naming the file in err.
int st_open(SafeTensors *st, const char *path, char *err, size_t errlen);
// Opens a model directory: DIR/model.safetensors.index.json (sharded) if present, else
// DIR/model.safetensors. A path to a file is opened directly (.json = index).
int st_open_model(SafeTensors *st, const char *path, char *err, size_t errlen);
void st_close(SafeTensors *st);
const StTensor *st_find(const SafeTensors *st, const char *name);
const char *st_meta(const SafeTensors *st, const char *key);

// First element of a float tensor (F32, BF16, F16, F8) that is inf or NaN, read from its bits;
// numel when there is none or the dtype is not a float.
size_t st_first_nonfinite(const StTensor *t);
// Converts a float tensor (F32/BF16/F16) to fp32. 1 ok, 0 when the dtype is not a float.
int st_to_f32(const StTensor *t, float *dst);

// Writing: describe each tensor, then st_write. data must hold nbytes bytes.
typedef struct {
    const char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} StWriteTensor;

// Writes atomically (temp + fsync + rename). meta_keys/vals may be NULL.
int st_write(const char *path, const StWriteTensor *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta, char *err, size_t errlen);

// bf16/f16 <-> f32 helpers (round-to-nearest-even; NaN stays NaN).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

#ifdef __cplusplus
}
#endif
#endif
