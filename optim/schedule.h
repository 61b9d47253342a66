// Learning-rate schedules: linear warmup, then cosine / linear decay to min_lr, constant,
// or warmup-stable-decay (constant, then a linear decay over the last decay_frac of steps).
#ifndef LLAMA_AO_OPTIM_SCHEDULE_H
#define LLAMA_AO_OPTIM_SCHEDULE_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LR_COSINE = 0, LR_LINEAR = 1, LR_CONSTANT = 2, LR_WSD = 3 } LrKind;

typedef struct {
    LrKind kind;
    float lr, min_lr;
    int warmup, total;
    float decay_frac;  // WSD only
} LrSchedule;

// step counts from 0; returns the learning rate for that step.
float lr_at(const LrSchedule *s, int step);
// "cosine" | "linear" | "constant" | "wsd"; -1 when unknown.
int lr_kind_from_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif
