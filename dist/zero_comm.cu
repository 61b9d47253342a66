#include "zero_comm.cuh"

#include <math.h>
#include <string.h>

#include "../optim/adamw.cuh"

void zero_comm_init(ZeroComm *zc, Dist *d, const ZeroPlan *z, float *grads, bf16 *params, cudaStream_t compute) {
    memset(zc, 0, sizeof *zc);
    CHECK(z->level >= 1 && z->level <= 3, "ZeRO communication for level %d", z->level);
    CHECK(z->world == d->world && z->rank == d->rank, "ZeRO plan for rank %d of %d, process is rank %d of %d", z->rank,
          z->world, d->rank, d->world);
    zc->dist = d;
    zc->plan = z;
    zc->grads = grads;
    zc->params = params;
    zc->compute = compute;
    const size_t scratch = 1 + grad_norm_scratch_floats(z->total);  // the most any range needs
    CUDA_CHECK(cudaMalloc(&zc->norm_scratch, scratch * sizeof(float)));
    CUDA_CHECK(cudaMallocHost(&zc->h_norm, sizeof(float)));
}

void zero_comm_free(ZeroComm *zc) {
    if (zc->norm_scratch) cudaFree(zc->norm_scratch);
    if (zc->h_norm) cudaFreeHost(zc->h_norm);
    memset(zc, 0, sizeof *zc);
}

void zero_grads_ready(void *arg, int layer) {
    ZeroComm *zc = (ZeroComm *)arg;
    const ZeroPlan *z = zc->plan;
    const int b = layer < 0 ? z->n_layers : layer;
    CHECK(b >= 0 && b <= z->n_layers, "gradient bucket %d of a %d-layer plan", layer, z->n_layers);
    const size_t lo = z->bucket_lo[b], hi = z->bucket_hi[b];
    dist_comm_after(zc->dist, zc->compute);  // the bucket's gradients are complete
    if (z->level == 1) dist_allreduce_f32(zc->dist, zc->grads + lo, hi - lo, "the all-reduce of gradients");
    else dist_reduce_ranges_f32(zc->dist, zc->grads, z->bounds, lo, hi, "the reduce-scatter of gradients");
}

void zero_grads_wait(ZeroComm *zc) { dist_compute_after(zc->dist, zc->compute); }

float zero_grad_norm(ZeroComm *zc) {
    const ZeroPlan *z = zc->plan;
    float *out = zc->norm_scratch;
    if (z->level == 1) {
        grad_norm_squared(out, out + 1, zc->grads, z->total, zc->compute);
    } else {
        grad_norm_squared(out, out + 1, zc->grads + z->begin, z->end - z->begin, zc->compute);
        dist_comm_after(zc->dist, zc->compute);
        dist_allreduce_f32(zc->dist, out, 1, "the all-reduce of the gradient norm");
        dist_compute_after(zc->dist, zc->compute);
    }
    CUDA_CHECK(cudaMemcpyAsync(zc->h_norm, out, sizeof(float), cudaMemcpyDeviceToHost, zc->compute));
    dist_wait(zc->dist, zc->compute, "the gradient norm (gradients reduced over all ranks)");
    return sqrtf(*zc->h_norm);
}

void zero_params_gather(ZeroComm *zc) {
    if (zc->plan->level == 3) return;  // the shard is all a rank keeps; the next forward gathers it
    dist_comm_after(zc->dist, zc->compute);  // the shard's parameters are updated
    dist_allgather_ranges_bf16(zc->dist, zc->params, zc->plan->bounds, "the all-gather of parameters");
    dist_compute_after(zc->dist, zc->compute);
}

void zero_params_gather_range(void *arg, size_t lo, size_t hi, cudaStream_t s) {
    ZeroComm *zc = (ZeroComm *)arg;
    CHECK(zc->plan->level == 1 || zc->plan->level == 2, "zero_params_gather_range: a ZeRO-%d plan", zc->plan->level);
    dist_allgather_range_bf16(zc->dist, zc->params, zc->plan->bounds, lo, hi, s,
                              "the all-gather of a bucket of parameters (--zero-gather-overlap)");
}

void zero_params_fetch(void *arg, bf16 *dst, size_t lo, size_t hi, cudaStream_t s) {
    ZeroComm *zc = (ZeroComm *)arg;
    CHECK(zc->plan->level == 3, "zero_params_fetch: a ZeRO-%d plan keeps every parameter", zc->plan->level);
    dist_allgather_into_bf16(zc->dist, dst, zc->params, zc->plan->bounds, lo, hi, s,
                             "the all-gather of a layer's weights (ZeRO-3)");
}

void zero_params_fetch_runs(void *arg, const DistGatherRun *runs, int n, cudaStream_t s) {
    ZeroComm *zc = (ZeroComm *)arg;
    CHECK(zc->plan->level == 3, "zero_params_fetch_runs: a ZeRO-%d plan keeps every parameter", zc->plan->level);
    dist_allgather_runs(zc->dist, runs, n, zc->plan->bounds, s, "the all-gather of a layer's fp8 and bf16 weights (ZeRO-3)");
}

void zero_amax_reduce(void *arg, float *v, int n, cudaStream_t s) {
    ZeroComm *zc = (ZeroComm *)arg;
    dist_allreduce_max_f32(zc->dist, v, (size_t)n, s, "the all-reduce (max) of the fp8 weights' amax (ZeRO-3)");
}
