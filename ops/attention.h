// Causal grouped-query attention (Llama GQA), softmax(q k^T / sqrt(hd)) v. CPU reference.
#ifndef LLAMA_AO_OPS_ATTENTION_H
#define LLAMA_AO_OPS_ATTENTION_H

#ifdef __cplusplus
extern "C" {
#endif

// q,out [B,T,n_heads,hd]; k,v [B,T,n_kv_heads,hd]; query head h reads kv head
// h / (n_heads / n_kv_heads). att [B,n_heads,T,T] receives the post-softmax probabilities
// (entries above the diagonal are 0); att may be NULL when backward is not needed.
void attention_forward_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                           int n_heads, int n_kv_heads, int head_dim);
// Accumulates dq, dk, dv (same shapes as q, k, v). att from forward is required.
// Deterministic: one thread owns each (b, kv head), so no gradient element has two writers.
void attention_backward_cpu(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *att, int B, int T, int n_heads, int n_kv_heads, int head_dim);

#ifdef __cplusplus
}
#endif

#endif
