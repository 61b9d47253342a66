#include "dist.cuh"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern "C" {
#include "../common/fileio.h"
}
#ifdef LLAMA_AO_NCCL
#include <nccl.h>
#endif
#ifdef LLAMA_AO_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only: no C++ bindings to link
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#define MPI_CHECK(call)                                                                 \
    do {                                                                                \
        int e_ = (call);                                                                \
        if (e_ != MPI_SUCCESS) {                                                        \
            char s_[MPI_MAX_ERROR_STRING];                                              \
            int l_ = 0;                                                                 \
            MPI_Error_string(e_, s_, &l_);                                              \
            ao_fail(__FILE__, __LINE__, "%s: MPI: %s (%s)", g_who, s_, #call);          \
        }                                                                               \
    } while (0)
#endif

struct DistImpl {
#ifdef LLAMA_AO_NCCL
    ncclComm_t comm;
#endif
    cudaEvent_t ev_compute, ev_comm;
    double *d_scratch, *h_scratch;  // dist_allreduce_host's 16 values, device and pinned host
    int aborted;
};

#define HOST_SCRATCH 16
#define WATCHDOG_S 30  // an abort or exit that itself hangs is cut short after this long

// The fail handler and the watchdog get no arguments, so the one description of this process
// lives here (text only; no GPU state).
static char g_who[192] = "rank 0/1";

static void pause_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

const char *dist_who(const Dist *d) {
    (void)d;
    return g_who;
}

static void set_who(const Dist *d, int device) {
    if (device >= 0)
        snprintf(g_who, sizeof g_who, "rank %d/%d (host %s, GPU %d)", d->rank, d->world, d->host, device);
    else
        snprintf(g_who, sizeof g_who, "rank %d/%d (host %s)", d->rank, d->world, d->host);
}

// Every fatal error of a multi-rank run says which rank it happened on (ao_fail prints the
// message and the location after this line).
static void fail_names_rank(const char *msg) {
    (void)msg;
    fflush(stdout);
    fprintf(stderr, "[%s] fatal:\n", g_who);
}

// A non-negative integer from the environment; -1 when unset and not required.
static int env_int(const char *name, int required, const char *hint) {
    const char *s = getenv(name);
    if (!s || !*s) {
        CHECK(!required, "%s is not set\n  HINT: %s", name, hint);
        return -1;
    }
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    CHECK(*end == 0 && errno == 0 && v >= 0 && v < (1 << 24), "%s=\"%s\" is not a non-negative integer", name, s);
    return (int)v;
}

static void parse_fault(Dist *d) {
    const char *s = getenv("LLAMA_AO_FAULT");
    if (!s || !*s) return;
    int r = -1, st = -1, used = 0;
    char kind[16] = {0};
    int ok = sscanf(s, "%d:%d:%15[a-z]%n", &r, &st, kind, &used) == 3 && s[used] == 0 && r >= 0 && st >= 0;
    d->fault = !ok ? DIST_FAULT_NONE : !strcmp(kind, "exit") ? DIST_FAULT_EXIT : !strcmp(kind, "hang") ? DIST_FAULT_HANG
                                                                                                       : DIST_FAULT_NONE;
    CHECK(d->fault != DIST_FAULT_NONE, "LLAMA_AO_FAULT=\"%s\": expected RANK:STEP:exit or RANK:STEP:hang", s);
    d->fault_rank = r;
    d->fault_step = st;
}

void dist_init(Dist *d, double timeout_s) {
    memset(d, 0, sizeof *d);
    d->world = 1;
    d->device = -1;
    d->timeout_s = timeout_s;
    CHECK(timeout_s > 0, "the distributed timeout must be positive (got %g s)", timeout_s);
    if (gethostname(d->host, sizeof d->host - 1) != 0) snprintf(d->host, sizeof d->host, "?");
    parse_fault(d);
    const int by_mpi = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
    if (by_mpi) {
#ifdef LLAMA_AO_MPI
        MPI_CHECK(MPI_Init(NULL, NULL));
        MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &d->rank));
        MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &d->world));
        // The node-local rank from MPI itself (ranks sharing memory share a node), so nothing
        // depends on how the launcher numbers nodes.
        MPI_Comm node;
        MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node));
        MPI_CHECK(MPI_Comm_rank(node, &d->local_rank));
        MPI_CHECK(MPI_Comm_free(&node));
        d->launch = DIST_LAUNCH_MPI;
#else
        FAIL("this process was started by an MPI launcher, but train_llama was built without MPI (no mpi.h found)\n"
             "  HINT: install OpenMPI (libopenmpi-dev) and rebuild, or start the ranks with the LLAMA_AO_* variables "
             "(docs/TRAINING.md, multi-GPU)");
#endif
    } else if (getenv("LLAMA_AO_WORLD_SIZE")) {
        const char *hint = "launcher-free start: set LLAMA_AO_WORLD_SIZE, LLAMA_AO_RANK, LLAMA_AO_LOCAL_RANK and "
                           "LLAMA_AO_INIT_FILE for every rank (docs/TRAINING.md)";
        d->world = env_int("LLAMA_AO_WORLD_SIZE", 1, hint);
        CHECK(d->world >= 1, "LLAMA_AO_WORLD_SIZE must be at least 1");
        d->rank = env_int("LLAMA_AO_RANK", d->world > 1, hint);
        if (d->rank < 0) d->rank = 0;
        d->local_rank = env_int("LLAMA_AO_LOCAL_RANK", d->world > 1, hint);
        if (d->local_rank < 0) d->local_rank = 0;
        CHECK(d->rank < d->world, "LLAMA_AO_RANK=%d is not below LLAMA_AO_WORLD_SIZE=%d", d->rank, d->world);
        CHECK(d->world == 1 || (getenv("LLAMA_AO_INIT_FILE") && getenv("LLAMA_AO_INIT_FILE")[0]),
              "LLAMA_AO_INIT_FILE is not set\n  HINT: %s; the file is on a filesystem every rank sees and must not "
              "exist before the job starts", hint);
        d->launch = DIST_LAUNCH_ENV;
    }
    set_who(d, -1);
    if (d->world > 1) ao_set_fail_handler(fail_names_rank);
}

int dist_device(Dist *d) {
    if (d->world == 1) {  // what one process always did: GPU 0, or the one asked for; gpu_ctx_init checks it
        d->device = d->local_rank;
        set_who(d, d->device);
        return d->device;
    }
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    CHECK(e == cudaSuccess && n > 0, "%s: no CUDA GPU is available (%s)", g_who,
          e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
    if (d->local_rank < n) d->device = d->local_rank;
    else if (n == 1) d->device = 0;  // the launcher gave each rank its own single visible GPU
    else
        FAIL("%s: node-local rank %d needs GPU %d, but this node shows %d GPUs\n  HINT: start at most one rank per "
             "GPU on each node", g_who, d->local_rank, d->local_rank, n);
    set_who(d, d->device);
    return d->device;
}

// The part of [lo, hi) in [bounds[r], bounds[r+1]): [*a, *b), empty when *a >= *b.
static void clip_range(const size_t *bounds, int r, size_t lo, size_t hi, size_t *a, size_t *b) {
    *a = bounds[r] > lo ? bounds[r] : lo;
    *b = bounds[r + 1] < hi ? bounds[r + 1] : hi;
}

static void allgather_into_local(Dist *d, void *dst, const void *shard, int bytes, const size_t *bounds, size_t lo,
                                 size_t hi, cudaStream_t s) {
    size_t a, b;
    clip_range(bounds, d->rank, lo, hi, &a, &b);
    if (a < b)
        CUDA_CHECK(cudaMemcpyAsync((char *)dst + (a - lo) * bytes, (const char *)shard + (a - bounds[d->rank]) * bytes,
                                   (b - a) * bytes, cudaMemcpyDeviceToDevice, s));
}

#ifdef LLAMA_AO_NCCL

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void watchdog(int sig) {
    (void)sig;
    static const char m[] = "error: aborting the NCCL communicator or exiting took too long; exiting now\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    _exit(1);
}

// Aborts the communicator (so no kernel of ours keeps waiting on a peer) and exits non-zero.
__attribute__((noreturn)) static void abort_and_fail(Dist *d, const char *what, const char *why) {
    signal(SIGALRM, watchdog);
    alarm(WATCHDOG_S);  // stays armed through exit(): a stuck teardown cannot keep us alive
    if (d->impl && d->impl->comm && !d->impl->aborted) {
        d->impl->aborted = 1;
        ncclCommAbort(d->impl->comm);
    }
    FAIL("%s: %s while waiting for %s; the NCCL communicator was aborted\n  HINT: another rank died, hung or failed "
         "(see its log), or the network failed; --dist-timeout sets how long ranks wait for each other (now %g s)",
         g_who, why, what, d->timeout_s);
}

static void check_async(Dist *d, const char *what) {
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(d->impl->comm, &st);
    if (r != ncclSuccess) st = r;
    if (st == ncclSuccess || st == ncclInProgress) return;
    char why[512];
    snprintf(why, sizeof why, "NCCL error \"%s\" (%s)", ncclGetErrorString(st), ncclGetLastError(d->impl->comm));
    abort_and_fail(d, what, why);
}

static void check_timeout(Dist *d, double t0, const char *what) {
    if (now_s() - t0 <= d->timeout_s) return;
    char why[96];
    snprintf(why, sizeof why, "timed out after %.0f s", d->timeout_s);
    abort_and_fail(d, what, why);
}

// A non-blocking communicator may answer ncclInProgress; then nothing else may be called on it
// until its state leaves that value.
// Polls a non-blocking communicator until the call in progress is done. Enqueueing a collective
// usually completes within microseconds, so the first 64 polls only yield the CPU (a nanosleep,
// however short, costs ~50 us of timer slack); after that every 100 us. A fixed 100 us sleep cost
// every grouped call up to that much host time (17 calls per step with --zero-gather-overlap).
static void wait_ready(Dist *d, const char *what) {
    const double t0 = now_s();
    for (int polls = 0;; polls++) {
        ncclResult_t st = ncclInProgress;
        ncclResult_t r = ncclCommGetAsyncError(d->impl->comm, &st);
        if (r == ncclSuccess && st == ncclSuccess) return;
        if (r != ncclSuccess || st != ncclInProgress) check_async(d, what);
        check_timeout(d, t0, what);
        if (polls < 64) sched_yield();
        else pause_us(100);
    }
}

static void nccl_call(Dist *d, ncclResult_t r, const char *what) {
    if (r == ncclSuccess) return;
    if (r == ncclInProgress) {
        wait_ready(d, what);
        return;
    }
    char why[512];
    snprintf(why, sizeof why, "NCCL call failed: \"%s\" (%s)", ncclGetErrorString(r), ncclGetLastError(d->impl->comm));
    abort_and_fail(d, what, why);
}

// The NCCL id from rank 0 to everyone: over MPI, or through the init file.
static void share_id(Dist *d, ncclUniqueId *id) {
    const double t0 = now_s();
    if (d->launch == DIST_LAUNCH_MPI) {
#ifdef LLAMA_AO_MPI
        MPI_Request req;
        MPI_CHECK(MPI_Ibcast(id, (int)sizeof *id, MPI_BYTE, 0, MPI_COMM_WORLD, &req));
        for (int done = 0; !done;) {
            MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
            CHECK(done || now_s() - t0 <= d->timeout_s,
                  "%s: timed out after %.0f s waiting for rank 0's NCCL id over MPI\n  HINT: rank 0 did not start or "
                  "failed early (see its log)", g_who, d->timeout_s);
            if (!done) pause_us(1000);
        }
#endif
        return;
    }
    const char *path = getenv("LLAMA_AO_INIT_FILE");
    char err[1024];
    if (d->rank == 0) {
        CHECK(!file_exists(path), "%s: the init file %s already exists (left by an earlier job?)\n  HINT: remove it, "
              "or give each job its own LLAMA_AO_INIT_FILE", g_who, path);
        AtomicFile af;  // temporary name + rename: readers never see half a file
        if (!atomic_open(&af, path, err, sizeof err)) FAIL("%s: %s", g_who, err);
        fprintf(af.f, "llama.ao nccl-id v1 world %d\n", d->world);
        for (size_t i = 0; i < sizeof id->internal; i++) fprintf(af.f, "%02x", (unsigned char)id->internal[i]);
        fputc('\n', af.f);
        if (!atomic_close(&af, err, sizeof err)) FAIL("%s: %s", g_who, err);
        return;
    }
    for (;;) {
        if (file_exists(path)) {
            char *text;
            size_t n;
            if (!read_file_all(path, 4096, &text, &n, err, sizeof err)) FAIL("%s: %s", g_who, err);
            int world = 0, used = 0;
            int ok = sscanf(text, "llama.ao nccl-id v1 world %d\n%n", &world, &used) == 1 &&
                     n >= (size_t)used + 2 * sizeof id->internal;
            for (size_t i = 0; ok && i < sizeof id->internal; i++) {
                unsigned v;
                ok = sscanf(text + used + 2 * i, "%2x", &v) == 1;
                id->internal[i] = (char)v;
            }
            free(text);
            CHECK(ok, "%s: %s is not an init file written by rank 0 of train_llama", g_who, path);
            CHECK(world == d->world, "%s: the init file %s is for a job of %d ranks, this one has %d\n  HINT: a stale "
                  "file from an earlier job? Remove it and restart every rank", g_who, path, world, d->world);
            return;
        }
        CHECK(now_s() - t0 <= d->timeout_s, "%s: timed out after %.0f s waiting for rank 0 to write the init file %s\n"
              "  HINT: is rank 0 running, and does LLAMA_AO_INIT_FILE name the same file on a filesystem both see?",
              g_who, d->timeout_s, path);
        pause_us(100000);
    }
}

void dist_comm_init(Dist *d) {
    if (d->world == 1) return;
    CHECK(d->device >= 0, "dist_comm_init before dist_device");
    d->impl = (DistImpl *)ao_calloc(1, sizeof *d->impl);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (d->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        CHECK(r == ncclSuccess, "%s: ncclGetUniqueId: %s", g_who, ncclGetErrorString(r));
    }
    share_id(d, &id);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;  // calls return at once; every wait below polls with the timeout
    nccl_call(d, ncclCommInitRankConfig(&d->impl->comm, d->world, id, d->rank, &cfg),
              "the NCCL communicator to form (every rank joining)");
    wait_ready(d, "the NCCL communicator to form (every rank joining)");
    if (d->launch == DIST_LAUNCH_ENV && d->rank == 0) unlink(getenv("LLAMA_AO_INIT_FILE"));  // everyone has read it
    CUDA_CHECK(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&d->impl->ev_compute, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&d->impl->ev_comm, cudaEventDisableTiming));
    CUDA_CHECK(cudaMalloc(&d->impl->d_scratch, HOST_SCRATCH * sizeof(double)));
    CUDA_CHECK(cudaMallocHost(&d->impl->h_scratch, HOST_SCRATCH * sizeof(double)));
}

void dist_wait(Dist *d, cudaStream_t s, const char *what) {
    if (!d || !d->impl) {
        CUDA_CHECK(cudaStreamSynchronize(s));
        return;
    }
    const double t0 = now_s();
    for (long i = 0;; i++) {
        cudaError_t e = cudaStreamQuery(s);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) CUDA_CHECK(e);
        check_async(d, what);
        check_timeout(d, t0, what);
        if (i > 200) pause_us(20);  // spin briefly first: most waits are short
    }
}

void dist_free(Dist *d) {
    if (d->impl) {
        if (!d->impl->aborted) {
            dist_wait(d, d->stream, "the last communication to finish");
            nccl_call(d, ncclCommFinalize(d->impl->comm), "the NCCL communicator to finalize");
            wait_ready(d, "the NCCL communicator to finalize");
            ncclCommDestroy(d->impl->comm);
        }
        cudaEventDestroy(d->impl->ev_compute);
        cudaEventDestroy(d->impl->ev_comm);
        cudaFree(d->impl->d_scratch);
        cudaFreeHost(d->impl->h_scratch);
        cudaStreamDestroy(d->stream);
        free(d->impl);
        d->impl = nullptr;
    }
#ifdef LLAMA_AO_MPI
    if (d->launch == DIST_LAUNCH_MPI) MPI_Finalize();
#endif
    d->launch = DIST_LAUNCH_SINGLE;
}

void dist_comm_after(Dist *d, cudaStream_t compute) {
    if (!d->impl) return;
    CUDA_CHECK(cudaEventRecord(d->impl->ev_compute, compute));
    CUDA_CHECK(cudaStreamWaitEvent(d->stream, d->impl->ev_compute, 0));
}

void dist_compute_after(Dist *d, cudaStream_t compute) {
    if (!d->impl) return;
    CUDA_CHECK(cudaEventRecord(d->impl->ev_comm, d->stream));
    CUDA_CHECK(cudaStreamWaitEvent(compute, d->impl->ev_comm, 0));
}

void dist_allreduce_f32(Dist *d, float *buf, size_t n, const char *what) {
    if (!d->impl || n == 0) return;
    nccl_call(d, ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, d->impl->comm, d->stream), what);
}

void dist_reduce_ranges_f32(Dist *d, float *buf, const size_t *bounds, size_t lo, size_t hi, const char *what) {
    if (!d->impl) return;
    nccl_call(d, ncclGroupStart(), what);
    for (int r = 0; r < d->world; r++) {
        size_t a = bounds[r] > lo ? bounds[r] : lo, b = bounds[r + 1] < hi ? bounds[r + 1] : hi;
        if (a < b) nccl_call(d, ncclReduce(buf + a, buf + a, b - a, ncclFloat32, ncclSum, r, d->impl->comm, d->stream), what);
    }
    nccl_call(d, ncclGroupEnd(), what);
}

void dist_allgather_ranges_bf16(Dist *d, bf16 *buf, const size_t *bounds, const char *what) {
    if (!d->impl) return;
    nccl_call(d, ncclGroupStart(), what);
    for (int r = 0; r < d->world; r++) {
        size_t n = bounds[r + 1] - bounds[r];
        if (n) nccl_call(d, ncclBroadcast(buf + bounds[r], buf + bounds[r], n, ncclBfloat16, r, d->impl->comm, d->stream), what);
    }
    nccl_call(d, ncclGroupEnd(), what);
}

void dist_allgather_range_bf16(Dist *d, bf16 *buf, const size_t *bounds, size_t lo, size_t hi, cudaStream_t s,
                               const char *what) {
    if (!d->impl) return;
    nccl_call(d, ncclGroupStart(), what);
    for (int r = 0; r < d->world; r++) {
        size_t a, b;
        clip_range(bounds, r, lo, hi, &a, &b);
        if (a < b) nccl_call(d, ncclBroadcast(buf + a, buf + a, b - a, ncclBfloat16, r, d->impl->comm, s), what);
    }
    nccl_call(d, ncclGroupEnd(), what);
}

void dist_allgather_runs(Dist *d, const DistGatherRun *runs, int n, const size_t *bounds, cudaStream_t s,
                         const char *what) {
    if (!d->impl) {
        for (int i = 0; i < n; i++)
            allgather_into_local(d, runs[i].dst, runs[i].shard, runs[i].bytes, bounds, runs[i].lo, runs[i].hi, s);
        return;
    }
    // One broadcast per run and rank owning part of it: the root sends from its shard, every rank
    // (the root too: out of place) receives into dst. Uneven ranges rule out ncclAllGather.
    nccl_call(d, ncclGroupStart(), what);
    for (int i = 0; i < n; i++) {
        const DistGatherRun *u = &runs[i];
        CHECK(u->bytes == 1 || u->bytes == 2, "%s: elements of %d bytes (1 or 2)", what, u->bytes);
        for (int r = 0; r < d->world; r++) {
            size_t a, b;
            clip_range(bounds, r, u->lo, u->hi, &a, &b);
            if (a >= b) continue;
            char *recv = (char *)u->dst + (a - u->lo) * u->bytes;
            const void *send = r == d->rank ? (const char *)u->shard + (a - bounds[r]) * u->bytes : recv;
            nccl_call(d, ncclBroadcast(send, recv, b - a, u->bytes == 1 ? ncclUint8 : ncclBfloat16, r, d->impl->comm, s),
                      what);
        }
    }
    nccl_call(d, ncclGroupEnd(), what);
}

void dist_allreduce_max_f32(Dist *d, float *buf, size_t n, cudaStream_t s, const char *what) {
    if (!d->impl || n == 0) return;
    nccl_call(d, ncclAllReduce(buf, buf, n, ncclFloat32, ncclMax, d->impl->comm, s), what);
}

void dist_gather_ranges_f32(Dist *d, float *buf, const size_t *bounds, const char *what) {
    if (!d->impl) return;
    nccl_call(d, ncclGroupStart(), what);
    if (d->rank == 0) {
        for (int r = 1; r < d->world; r++) {
            size_t n = bounds[r + 1] - bounds[r];
            if (n) nccl_call(d, ncclRecv(buf + bounds[r], n, ncclFloat32, r, d->impl->comm, d->stream), what);
        }
    } else {
        size_t n = bounds[d->rank + 1] - bounds[d->rank];
        if (n) nccl_call(d, ncclSend(buf + bounds[d->rank], n, ncclFloat32, 0, d->impl->comm, d->stream), what);
    }
    nccl_call(d, ncclGroupEnd(), what);
}

void dist_allreduce_host(Dist *d, double *v, int n, const char *what) {
    if (!d->impl) return;
    CHECK(n >= 1 && n <= HOST_SCRATCH, "dist_allreduce_host: %d values (at most %d)", n, HOST_SCRATCH);
    memcpy(d->impl->h_scratch, v, (size_t)n * sizeof(double));
    CUDA_CHECK(cudaMemcpyAsync(d->impl->d_scratch, d->impl->h_scratch, (size_t)n * sizeof(double), cudaMemcpyHostToDevice,
                               d->stream));
    nccl_call(d, ncclAllReduce(d->impl->d_scratch, d->impl->d_scratch, (size_t)n, ncclFloat64, ncclSum, d->impl->comm,
                               d->stream), what);
    CUDA_CHECK(cudaMemcpyAsync(d->impl->h_scratch, d->impl->d_scratch, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost,
                               d->stream));
    dist_wait(d, d->stream, what);
    memcpy(v, d->impl->h_scratch, (size_t)n * sizeof(double));
}

#else  // built without NCCL: one rank only

void dist_comm_init(Dist *d) {
    CHECK(d->world == 1, "%s: %d ranks need NCCL, but train_llama was built without it (no nccl.h found)\n  HINT: "
          "install NCCL (libnccl-dev) and rebuild", g_who, d->world);
}
void dist_wait(Dist *d, cudaStream_t s, const char *what) {
    (void)d, (void)what;
    CUDA_CHECK(cudaStreamSynchronize(s));
}
void dist_free(Dist *d) {
#ifdef LLAMA_AO_MPI
    if (d->launch == DIST_LAUNCH_MPI) MPI_Finalize();
#endif
    d->launch = DIST_LAUNCH_SINGLE;
}
void dist_comm_after(Dist *, cudaStream_t) {}
void dist_compute_after(Dist *, cudaStream_t) {}
void dist_allreduce_f32(Dist *, float *, size_t, const char *) {}
void dist_reduce_ranges_f32(Dist *, float *, const size_t *, size_t, size_t, const char *) {}
void dist_allgather_ranges_bf16(Dist *, bf16 *, const size_t *, const char *) {}
void dist_allgather_range_bf16(Dist *, bf16 *, const size_t *, size_t, size_t, cudaStream_t, const char *) {}
void dist_gather_ranges_f32(Dist *, float *, const size_t *, const char *) {}
void dist_allgather_runs(Dist *d, const DistGatherRun *runs, int n, const size_t *bounds, cudaStream_t s,
                         const char *what) {
    (void)what;
    for (int i = 0; i < n; i++)
        allgather_into_local(d, runs[i].dst, runs[i].shard, runs[i].bytes, bounds, runs[i].lo, runs[i].hi, s);
}
void dist_allreduce_max_f32(Dist *, float *, size_t, cudaStream_t, const char *) {}
void dist_allreduce_host(Dist *, double *, int, const char *) {}

#endif

void dist_allgather_into_bf16(Dist *d, bf16 *dst, const bf16 *shard, const size_t *bounds, size_t lo, size_t hi,
                              cudaStream_t s, const char *what) {
    const DistGatherRun run = {dst, shard, lo, hi, 2};
    dist_allgather_runs(d, &run, 1, bounds, s, what);
}

void dist_sync_hook(void *arg, cudaStream_t s, const char *what) { dist_wait((Dist *)arg, s, what); }

void dist_barrier(Dist *d, const char *what) {
    double one = 1;
    dist_allreduce_host(d, &one, 1, what);
}

void dist_fault_point(Dist *d, int step) {
    if (d->fault == DIST_FAULT_NONE || d->rank != d->fault_rank || step != d->fault_step) return;
    fflush(stdout);
    if (d->fault == DIST_FAULT_EXIT) {
        fprintf(stderr, "[%s] LLAMA_AO_FAULT: this rank dies at step %d (injected fault, exit status 3)\n", g_who, step);
        _exit(3);  // no clean-up, as a crash
    }
    // A rank that stops responding for longer than the others wait, then dies: the others must
    // give up on their own (timeout), and this one ends too, so no process outlives the test.
    const double hang = d->timeout_s + 5;
    fprintf(stderr, "[%s] LLAMA_AO_FAULT: this rank stops responding at step %d for %.0f s (injected fault)\n", g_who,
            step, hang);
    pause_us((long)(hang * 1e6));
    fprintf(stderr, "[%s] LLAMA_AO_FAULT: injected hang over, exiting with status 4\n", g_who);
    _exit(4);
}
