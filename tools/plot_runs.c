// plot_runs: compare training runs. Reads train_llama's log.jsonl of each run, draws one curve
// per run into an SVG (common/plot.h) and prints a table: final validation loss (the last
// evaluation), its difference from the first run's, steps trained, mean ms/step.
//
//   plot_runs -o OUT.svg [--title T] [--metric val|train] [--from STEP] [--smooth N] [--tol PCT]
//             LOG.jsonl[=LABEL] ...
//
// The first log is the reference (e.g. bf16, or fp32 AdamW): issue 7 and 8 ask for a final val
// loss within 1% of it (--tol). A log argument that names an existing file is a path; otherwise
// it is split at its last '=' into path and label (the label defaults to the path).
//
// Log records, one JSON object per line, as train_llama writes them:
//   {"step": 100, "val_loss": 6.003}                        an evaluation before step 101
//   {"step": 101, "loss": 5.98, "ms": 16.2, ...}           a training step (other keys ignored)
// Every line is checked with the strict JSON reader; a bad line is an error naming file:line.
// Two exceptions, both from how logs are written: blank lines are skipped, and an unterminated
// last line that does not parse (a run killed mid-write loses its stdio buffer) is dropped with
// a warning. A step at or below the previous one of its kind is a resumed run appending to the
// log (--resume): its records replace the earlier ones from that step on.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/fileio.h"
#include "../common/flags.h"
#include "../common/json.h"
#include "../common/plot.h"

#define RUNLOG_MAX_BYTES ((size_t)1 << 30)

typedef struct {
    double *x, *y, *ms;  // ms: train records only (NAN where absent)
    size_t n, cap;
} Curve;

typedef struct {
    const char *path, *label;
    Curve train, val;
    int dropped_tail;  // an unterminated, unparsable last line was dropped
} RunLog;

static void curve_push(Curve *c, double x, double y, double ms) {
    while (c->n > 0 && c->x[c->n - 1] >= x) c->n--;  // a resumed run supersedes from its first step on
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->x = ao_realloc(c->x, c->cap * sizeof(double));
        c->y = ao_realloc(c->y, c->cap * sizeof(double));
        c->ms = ao_realloc(c->ms, c->cap * sizeof(double));
    }
    c->x[c->n] = x, c->y[c->n] = y, c->ms[c->n] = ms;
    c->n++;
}

static void runlog_free(RunLog *r) {
    free(r->train.x), free(r->train.y), free(r->train.ms);
    free(r->val.x), free(r->val.y), free(r->val.ms);
    memset(r, 0, sizeof *r);
}

// One record (line `ln` of r->path) into r. 1 on success; 0 (a bad record) or -1 (not JSON at
// all) with "path:ln: why" in err.
static int runlog_record(RunLog *r, const char *text, size_t len, long ln, char *err, size_t errlen) {
    JsonDoc doc;
    char jerr[256];
    if (!json_parse(text, len, &doc, jerr, sizeof jerr)) {
        snprintf(err, errlen, "%s:%ld: not a JSON record (%s)", r->path, ln, jerr);
        return -1;
    }
    const JsonValue *root = doc.root, *step = json_get(root, "step"), *vl = json_get(root, "val_loss"),
                    *tl = json_get(root, "loss"), *ms = json_get(root, "ms");
    int64_t s = 0;
    const char *why = NULL;
    if (root->type != JSON_OBJECT) why = "a record must be a JSON object";
    else if (!step) why = "the record has no \"step\"";
    else if (!json_as_i64(step, &s) || s < 0 || s > 2147483647) why = "\"step\" is not an integer in [0, 2^31)";
    else if (!vl && !tl) why = "the record has neither \"loss\" nor \"val_loss\"";
    else if ((vl && vl->type != JSON_NUMBER) || (tl && tl->type != JSON_NUMBER)) why = "a loss is not a number";
    else if ((vl && !isfinite(vl->number)) || (tl && !isfinite(tl->number))) why = "a loss is not finite";
    else if (ms && (ms->type != JSON_NUMBER || !(ms->number >= 0) || !isfinite(ms->number)))
        why = "\"ms\" is not a non-negative number";
    if (why) {
        snprintf(err, errlen, "%s:%ld: %s", r->path, ln, why);
        json_free(&doc);
        return 0;
    }
    if (vl) curve_push(&r->val, (double)s, vl->number, NAN);
    if (tl) curve_push(&r->train, (double)s, tl->number, ms ? ms->number : NAN);
    json_free(&doc);
    return 1;
}

static int blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') return 0;
    return 1;
}

// Reads a whole log. 1 on success; 0 with a message naming the file (and line) in err.
static int runlog_read(RunLog *r, const char *path, const char *label, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    r->path = path, r->label = label ? label : path;
    char *text, ferr[512];
    size_t len;
    if (!read_file_all(path, RUNLOG_MAX_BYTES, &text, &len, ferr, sizeof ferr)) {
        snprintf(err, errlen, "%s", ferr);
        return 0;
    }
    int ok = 1;
    long ln = 0;
    for (size_t p = 0; p < len && ok;) {
        const char *nl = memchr(text + p, '\n', len - p);
        const size_t e = nl ? (size_t)(nl - text) : len;
        ln++;
        if (!blank(text + p, e - p)) {
            const int rc = runlog_record(r, text + p, e - p, ln, err, errlen);
            ok = rc > 0 || (rc < 0 && !nl);  // an unterminated last line that is not JSON: a write cut short
            if (rc < 0 && !nl) r->dropped_tail = 1;
        }
        p = e + 1;
    }
    free(text);
    if (ok && r->train.n == 0 && r->val.n == 0) {
        snprintf(err, errlen, "%s: no records (an empty log? train_llama writes one line per step)", path);
        ok = 0;
    }
    if (!ok) runlog_free(r);
    return ok;
}

// Mean ms of the training steps after the first (which pays for warm-up, as train_llama's
// "done:" line counts them); NAN when the log has no timings.
static double runlog_mean_ms(const RunLog *r) {
    double sum = 0;
    long n = 0;
    for (size_t i = 1; i < r->train.n; i++)
        if (!isnan(r->train.ms[i])) sum += r->train.ms[i], n++;
    return n ? sum / n : NAN;
}

// The table: one row per run, the first run the reference.
static void runs_table(FILE *f, const RunLog *r, int n, double tol_pct) {
    int w = 3;
    for (int i = 0; i < n; i++) w = (int)strlen(r[i].label) > w ? (int)strlen(r[i].label) : w;
    fprintf(f, "%-*s  %10s  %8s  %9s  %-12s  %7s  %8s\n", w, "run", "final val", "at step", "vs first", "within tol",
            "steps", "ms/step");
    const Curve *v0 = &r[0].val;
    for (int i = 0; i < n; i++) {
        const Curve *v = &r[i].val;
        char val[32] = "-", at[32] = "-", diff[32] = "-", ok[32] = "-", steps[32] = "-", ms[32] = "-";
        if (v->n) {
            snprintf(val, sizeof val, "%.4f", v->y[v->n - 1]);
            snprintf(at, sizeof at, "%.0f", v->x[v->n - 1]);
        }
        if (i == 0) {
            snprintf(diff, sizeof diff, "ref");
            snprintf(ok, sizeof ok, "ref");
        } else if (v->n && v0->n) {
            const double d = 100.0 * (v->y[v->n - 1] - v0->y[v0->n - 1]) / v0->y[v0->n - 1];
            snprintf(diff, sizeof diff, "%+.2f%%", d);
            if (v->x[v->n - 1] != v0->x[v0->n - 1]) snprintf(ok, sizeof ok, "other step");
            else snprintf(ok, sizeof ok, "%s", fabs(d) <= tol_pct ? "yes" : "NO");
        }
        if (r[i].train.n) snprintf(steps, sizeof steps, "%.0f", r[i].train.x[r[i].train.n - 1]);
        const double m = runlog_mean_ms(&r[i]);
        if (!isnan(m)) snprintf(ms, sizeof ms, "%.2f", m);
        fprintf(f, "%-*s  %10s  %8s  %9s  %-12s  %7s  %8s\n", w, r[i].label, val, at, diff, ok, steps, ms);
    }
    fprintf(f, "(final val: the last evaluation; vs first: relative to %s; within tol: |diff| <= %g%% "
               "at the same step)\n", r[0].label, tol_pct);
}

// The series a run contributes to the chart: points at step >= from, train losses as a
// trailing mean over `smooth` steps. Fills x, y (caller frees) and returns the count.
static size_t runlog_series(const RunLog *r, int train, int from, int smooth, double **xo, double **yo) {
    const Curve *c = train ? &r->train : &r->val;
    double *x = ao_malloc((c->n + 1) * sizeof(double)), *y = ao_malloc((c->n + 1) * sizeof(double)), acc = 0;
    size_t m = 0;
    for (size_t i = 0; i < c->n; i++) {
        acc += c->y[i];
        if (train && i >= (size_t)smooth) acc -= c->y[i - smooth];
        const size_t k = train && i + 1 > (size_t)smooth ? (size_t)smooth : i + 1;
        if (c->x[i] < from) continue;
        x[m] = c->x[i];
        y[m++] = train ? acc / (double)k : c->y[i];
    }
    *xo = x, *yo = y;
    return m;
}

// Splits "PATH=LABEL": an argument naming an existing file is a path with no label.
static void split_arg(char *arg, const char **path, const char **label) {
    *path = arg, *label = NULL;
    char *eq = strrchr(arg, '=');
    if (file_exists(arg) || !eq) return;
    *eq = 0;
    *label = eq + 1;
}

#ifndef PLOT_RUNS_NO_MAIN
static const char *g_out, *g_title, *g_metric = "val";
static int g_from, g_smooth = 1;
static float g_tol = 1.0f;

static const Flag FLAGS[] = {
    {"-o", "--out", FLAG_STR, &g_out, "SVG file to write", 1, 0},
    {"--title", NULL, FLAG_STR, &g_title, "chart title (none: the metric plotted)", 1, 0},
    {"--metric", NULL, FLAG_STR, &g_metric, "val (validation loss) | train (training loss)", 1, 0},
    {"--from", NULL, FLAG_INT, &g_from, "plot only steps >= this (zooms in past the first drop)", 0, 2147483647},
    {"--smooth", NULL, FLAG_INT, &g_smooth, "train: trailing mean over this many steps (1 = raw)", 1, 1 << 20},
    {"--tol", NULL, FLAG_FLOAT, &g_tol, "tolerance in % for the table's final-val comparison", 0, 1e6},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))
static const char *SYNOPSIS = "-o OUT.svg [options] LOG.jsonl[=LABEL] ...   (the first log is the reference)";

int main(int argc, char **argv) {
    char **pos = ao_calloc((size_t)argc + 1, sizeof(char *));
    int n = 0;
    if (!flags_parse_pos(FLAGS, N_FLAGS, argc, argv, "plot_runs", SYNOPSIS, pos, &n)) return 0;
    CHECK(g_out, "no output file\n  HINT: plot_runs -o OUT.svg LOG.jsonl[=LABEL] ...");
    CHECK(n > 0, "no logs given\n  HINT: plot_runs -o OUT.svg LOG.jsonl[=LABEL] ... (train_llama's RUN_DIR/log.jsonl)");
    const int train = !strcmp(g_metric, "train");
    CHECK(train || !strcmp(g_metric, "val"), "--metric %s: expected val or train", g_metric);
    RunLog *runs = ao_calloc((size_t)n, sizeof(RunLog));
    char err[1024];
    for (int i = 0; i < n; i++) {
        const char *path, *label;
        split_arg(pos[i], &path, &label);
        if (!runlog_read(&runs[i], path, label, err, sizeof err)) FAIL("%s", err);
        if (runs[i].dropped_tail) ao_warn("%s: the last line is cut short (a run killed mid-write?); ignored", path);
        CHECK(train ? runs[i].train.n > 0 : runs[i].val.n > 0,
              "%s: no \"%s\" records to plot\n  HINT: %s", path, train ? "loss" : "val_loss",
              train ? "is it a log of train_llama?"
                    : "was the run trained with --eval-every 0 or --val ''? try --metric train");
    }
    static const char *COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    PlotSeries *s = ao_calloc((size_t)n, sizeof(PlotSeries));
    for (int i = 0; i < n; i++) {
        double *x, *y;
        s[i].n = runlog_series(&runs[i], train, g_from, g_smooth, &x, &y);
        s[i].x = x, s[i].y = y, s[i].label = runs[i].label, s[i].color = COLORS[i % 10];
        if (!s[i].n) ao_warn("%s: no points at step >= %d", runs[i].path, g_from);
    }
    char title[256], ylabel[128];
    if (train && g_smooth > 1) snprintf(ylabel, sizeof ylabel, "training loss (mean of %d steps)", g_smooth);
    else snprintf(ylabel, sizeof ylabel, "%s loss", train ? "training" : "validation");
    snprintf(title, sizeof title, "%s", g_title ? g_title : ylabel);
    if (!plot_svg(g_out, title, "step", ylabel, s, n, err, sizeof err)) FAIL("%s", err);
    runs_table(stdout, runs, n, g_tol);
    printf("wrote %s (%d run%s, %s)\n", g_out, n, n > 1 ? "s" : "", ylabel);
    for (int i = 0; i < n; i++) {
        free((void *)s[i].x), free((void *)s[i].y);
        runlog_free(&runs[i]);
    }
    free(s), free(runs), free(pos);
    return 0;
}
#endif
