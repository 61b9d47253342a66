#include "schedule.h"

#include <math.h>
#include <string.h>

float lr_at(const LrSchedule *s, int step) {
    if (s->warmup > 0 && step < s->warmup) return s->lr * (float)(step + 1) / (float)s->warmup;
    if (s->kind == LR_CONSTANT || s->total <= s->warmup) return s->lr;
    const int last = s->total - 1;
    if (s->kind == LR_WSD) {
        int decay_start = s->total - (int)(s->decay_frac * s->total);
        if (step < decay_start) return s->lr;
        double t = last > decay_start ? (double)(step - decay_start) / (last - decay_start) : 1.0;
        return (float)(s->lr + (s->min_lr - s->lr) * (t > 1 ? 1 : t));
    }
    double t = last > s->warmup ? (double)(step - s->warmup) / (last - s->warmup) : 1.0;
    if (t > 1) t = 1;
    double w = s->kind == LR_COSINE ? 0.5 * (1 + cos(M_PI * t)) : 1 - t;
    return (float)(s->min_lr + (s->lr - s->min_lr) * w);
}

int lr_kind_from_name(const char *n) {
    if (!strcmp(n, "cosine")) return LR_COSINE;
    if (!strcmp(n, "linear")) return LR_LINEAR;
    if (!strcmp(n, "constant")) return LR_CONSTANT;
    if (!strcmp(n, "wsd")) return LR_WSD;
    return -1;
}
