// Line charts as SVG, written in plain C so training can draw its own loss curve.
#ifndef LLAMA_AO_COMMON_PLOT_H
#define LLAMA_AO_COMMON_PLOT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *label;
    const char *color;  // CSS color, e.g. "#1f77b4"
    const double *x, *y;
    size_t n;
} PlotSeries;

// Writes an SVG chart (atomically). Non-finite points are skipped. 1 ok, 0 on IO error.
int plot_svg(const char *path, const char *title, const char *xlabel, const char *ylabel, const PlotSeries *s,
             int n_series, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
