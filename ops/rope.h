// Rotary position embedding, HF Llama "rotate_half" layout (pairs are (i, i + hd/2), not
// interleaved). CPU reference.
#ifndef LLAMA_AO_OPS_ROPE_H
#define LLAMA_AO_OPS_ROPE_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ROPE_DEFAULT = 0, ROPE_LLAMA3 = 1 } RopeType;

// theta = rope_theta; the rest is HF rope_scaling for "llama3" (ignored for ROPE_DEFAULT).
typedef struct {
    RopeType type;
    float theta;
    float factor, low_freq_factor, high_freq_factor;
    int original_max_position_embeddings;
} RopeParams;

// inv_freq[head_dim/2], as transformers' _compute_default_rope_parameters /
// _compute_llama3_parameters compute it in fp32.
void rope_inv_freq_cpu(float *inv_freq, int head_dim, const RopeParams *p);
// inp,out [B,T,n_heads,head_dim]; position of token t is pos_offset + t. out may == inp.
void rope_forward_cpu(float *out, const float *inp, const float *inv_freq, int B, int T, int n_heads, int head_dim,
                      int pos_offset);
// Rotation by -angle (the transpose). WRITES dinp (does not accumulate); dinp may == dout.
void rope_backward_cpu(float *dinp, const float *dout, const float *inv_freq, int B, int T, int n_heads, int head_dim,
                       int pos_offset);

#ifdef __cplusplus
}
#endif

#endif
