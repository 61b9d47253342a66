// tools/plot_runs.c (the run comparison behind the issue 7 and 8 convergence pictures): the log
// reader on small synthetic train_llama logs, good and corrupt (every rejection names file:line),
// resumed and cut-short logs, the table's numbers, the plotted series; then the built tool itself
// ($(BUILD)/plot_runs, found beside this test's directory): exit status, message, SVG written.
// The tool's functions are static; the test includes its source, as llm.c's test_gpt2 does.
#define PLOT_RUNS_NO_MAIN
#include "../tools/plot_runs.c"

#include <libgen.h>
#include <sys/wait.h>

#include "test.h"

static char g_dir[512];

// Writes text to DIR/name; returns the path (static buffer, one at a time).
static const char *write_log(const char *name, const char *text) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
    return path;
}

// A train_llama-like log: val at 0, every `every` steps and at `steps`; train steps 1..steps
// with loss 10 - 0.01 * step, ms 50 at step 1 (warm-up) and ms_step after.
static char *make_log(int steps, int every, const double *val, double ms_step) {
    size_t cap = 1 << 16, n = 0;
    char *t = ao_malloc(cap);
    int k = 0;
    for (int s = 0; s <= steps; s++) {
        if (n + 256 > cap) t = ao_realloc(t, cap *= 2);
        if (s % every == 0 || s == steps)
            n += (size_t)snprintf(t + n, cap - n, "{\"step\": %d, \"val_loss\": %.6f}\n", s, val[k++]);
        if (s == steps) break;
        n += (size_t)snprintf(t + n, cap - n,
                              "{\"step\": %d, \"loss\": %.6f, \"norm\": 1.0, \"lr\": 1e-3, \"ms\": %.3f, "
                              "\"tok_s\": 1.0}\n",
                              s + 1, 10 - 0.01 * (s + 1), s == 0 ? 50.0 : ms_step);
    }
    return t;
}

static int contains(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

// The line of the table that starts with `label` ("" when none).
static void table_row(const char *tab, const char *label, char *row, size_t n) {
    row[0] = 0;
    for (const char *p = tab; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, label, strlen(label)) && p[strlen(label)] == ' ') {
            snprintf(row, n, "%.*s", (int)strcspn(p, "\n"), p);
            return;
        }
}

static void test_read_and_table(void) {
    const double va[] = {11.0, 5.0, 4.0}, vb[] = {11.0, 5.1, 4.02}, vc[] = {11.0, 5.2, 4.1}, vd[] = {11.0, 5.0};
    char *ta = make_log(200, 100, va, 10.0), *tb = make_log(200, 100, vb, 12.5), *tc = make_log(200, 100, vc, 20.0),
         *td = make_log(100, 100, vd, 10.0);
    RunLog r[4];
    char err[1024], names[4][16] = {"a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"}, paths[4][1024];
    const char *labels[4] = {"bf16", "fp8-rowwise", "adamw4bit", NULL}, *texts[4] = {ta, tb, tc, td};
    for (int i = 0; i < 4; i++) {
        snprintf(paths[i], sizeof paths[i], "%s", write_log(names[i], texts[i]));
        int ok = runlog_read(&r[i], paths[i], labels[i], err, sizeof err);
        TEST_CHECK(ok, "read %s: %s", names[i], err);
        if (!ok) return;
    }
    TEST_CHECK(r[0].val.n == 3 && r[0].val.x[2] == 200 && r[0].val.y[2] == 4.0, "a: 3 evaluations, 4.0 at step 200");
    TEST_CHECK(r[0].train.n == 200 && r[0].train.x[199] == 200 && fabs(r[0].train.y[199] - 8.0) < 1e-12,
               "a: 200 training steps, loss 8 at the last");
    TEST_CHECK(fabs(runlog_mean_ms(&r[0]) - 10.0) < 1e-9, "a: mean ms without the warm-up step: %g",
               runlog_mean_ms(&r[0]));
    TEST_CHECK(fabs(runlog_mean_ms(&r[1]) - 12.5) < 1e-9, "b: mean ms %g", runlog_mean_ms(&r[1]));
    TEST_CHECK(!strcmp(r[3].label, paths[3]), "no label: the path");
    char *tab = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&tab, &tlen);
    runs_table(f, r, 4, 1.0);
    fclose(f);
    // b: (4.02 - 4) / 4 = +0.50%, within 1%; c: +2.50%, not; d stopped at step 100
    const char *want[] = {"bf16", "4.0000", "ref", "fp8-rowwise", "4.0200", "+0.50%", "yes", "12.50", "adamw4bit",
                          "4.1000", "+2.50%", "NO", "20.00", "5.0000", "+25.00%", "other step", "10.00"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        TEST_CHECK(contains(tab, want[i]), "table lacks \"%s\":\n%s", want[i], tab);
    // row by row: each row has its own numbers
    char row[512];
    table_row(tab, "fp8-rowwise", row, sizeof row);
    TEST_CHECK(contains(row, "+0.50%") && contains(row, "yes") && contains(row, "12.50") && contains(row, "  200  "),
               "b's row: %s", row);
    table_row(tab, "adamw4bit", row, sizeof row);
    TEST_CHECK(contains(row, "+2.50%") && contains(row, " NO ") && contains(row, "20.00"), "c's row: %s", row);
    table_row(tab, paths[3], row, sizeof row);
    TEST_CHECK(contains(row, "+25.00%") && contains(row, "other step") && contains(row, "  100  "), "d's row: %s", row);
    free(tab);

    // series: val from step 100 on; train smoothed over 4 steps
    double *x, *y;
    size_t m = runlog_series(&r[0], 0, 100, 1, &x, &y);
    TEST_CHECK(m == 2 && x[0] == 100 && y[0] == 5.0 && x[1] == 200 && y[1] == 4.0, "val series from 100: %zu points",
               m);
    free(x), free(y);
    m = runlog_series(&r[0], 1, 0, 4, &x, &y);
    // trailing means of 9.99, 9.98, ...: step 1 alone, step 2 = mean(9.99, 9.98), step 10 = mean of steps 7..10
    TEST_CHECK(m == 200 && fabs(y[0] - 9.99) < 1e-9 && fabs(y[1] - 9.985) < 1e-9 && fabs(y[9] - 9.915) < 1e-9,
               "train series smoothed: %zu points, %g %g %g", m, m ? y[0] : 0, m > 1 ? y[1] : 0, m > 9 ? y[9] : 0);
    free(x), free(y);
    for (int i = 0; i < 4; i++) runlog_free(&r[i]);
    free(ta), free(tb), free(tc), free(td);
}

static void test_resumed_and_cut_short(void) {
    RunLog r;
    char err[1024];
    // steps 1..4, then a resume from step 2 appends 3..5 with other losses; then a cut-short line
    const char *p = write_log("resumed.jsonl",
                              "{\"step\": 0, \"val_loss\": 9}\n{\"step\": 1, \"loss\": 1}\n{\"step\": 2, \"loss\": 2}\n"
                              "{\"step\": 3, \"loss\": 3}\n{\"step\": 4, \"loss\": 4}\n\n"
                              "{\"step\": 3, \"loss\": 30}\n{\"step\": 4, \"loss\": 40}\n{\"step\": 5, \"loss\": 50}\n"
                              "{\"step\": 5, \"val_loss\": 8}\n{\"step\": 6, \"lo");
    int ok = runlog_read(&r, p, "resumed", err, sizeof err);
    TEST_CHECK(ok, "resumed log: %s", err);
    if (!ok) return;
    TEST_CHECK(r.train.n == 5 && r.train.y[1] == 2 && r.train.y[2] == 30 && r.train.y[4] == 50,
               "resumed: records from the resume on replace the old ones (%zu steps)", r.train.n);
    TEST_CHECK(r.val.n == 2 && r.val.y[1] == 8, "resumed: 2 evaluations");
    TEST_CHECK(r.dropped_tail == 1, "the cut-short last line is dropped and flagged");
    TEST_CHECK(isnan(runlog_mean_ms(&r)), "no \"ms\": no mean");
    runlog_free(&r);
}

static void test_corrupt(void) {
    struct { const char *name, *text, *needle; } cases[] = {
        {"empty.jsonl", "", "no records"},
        {"blank.jsonl", "\n  \n\n", "no records"},
        {"badjson.jsonl", "{\"step\": 0, \"val_loss\": 9}\n{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": nan}\n",
         "badjson.jsonl:3: not a JSON record"},
        {"trailing.jsonl", "{\"step\": 1, \"loss\": 2},\n", "trailing.jsonl:1: not a JSON record"},
        {"nostep.jsonl", "{\"step\": 1, \"loss\": 2}\n{\"loss\": 2}\n", "nostep.jsonl:2: the record has no \"step\""},
        {"negstep.jsonl", "{\"step\": -1, \"loss\": 2}\n", "negstep.jsonl:1: \"step\" is not an integer"},
        {"fracstep.jsonl", "{\"step\": 1.5, \"loss\": 2}\n", "fracstep.jsonl:1: \"step\" is not an integer"},
        {"bigstep.jsonl", "{\"step\": 99999999999, \"loss\": 2}\n", "bigstep.jsonl:1: \"step\" is not an integer"},
        {"noloss.jsonl", "{\"step\": 1, \"lr\": 2}\n", "noloss.jsonl:1: the record has neither"},
        {"strloss.jsonl", "{\"step\": 1, \"val_loss\": \"4.2\"}\n", "strloss.jsonl:1: a loss is not a number"},
        {"infloss.jsonl", "{\"step\": 1, \"loss\": 1e999}\n", "infloss.jsonl:1:"},
        {"array.jsonl", "[1, 2]\n", "array.jsonl:1: a record must be a JSON object"},
        {"dupkey.jsonl", "{\"step\": 1, \"loss\": 2, \"loss\": 3}\n", "dupkey.jsonl:1: not a JSON record"},
        {"badms.jsonl", "{\"step\": 1, \"loss\": 2, \"ms\": -4}\n", "badms.jsonl:1: \"ms\""},
        // the last line is unterminated but JSON: a bad record, not a cut-short write
        {"lastbad.jsonl", "{\"step\": 1, \"loss\": 2}\n{\"loss\": 3}", "lastbad.jsonl:2: the record has no \"step\""},
        {"binary.jsonl", "\x01\x02\xff\n", "binary.jsonl:1: not a JSON record"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        RunLog r;
        char err[1024] = "";
        const char *p = write_log(cases[i].name, cases[i].text);
        int ok = runlog_read(&r, p, NULL, err, sizeof err);
        TEST_CHECK(!ok && contains(err, cases[i].needle), "%s: expected an error with \"%s\", got %s \"%s\"",
                   cases[i].name, cases[i].needle, ok ? "success" : "error", err);
        if (ok) runlog_free(&r);
    }
    RunLog r;
    char err[1024] = "", missing[1024];
    snprintf(missing, sizeof missing, "%s/missing.jsonl", g_dir);
    TEST_CHECK(!runlog_read(&r, missing, NULL, err, sizeof err) && contains(err, "missing.jsonl"),
               "a missing file: error naming it, got \"%s\"", err);
    TEST_CHECK(!runlog_read(&r, g_dir, NULL, err, sizeof err) && err[0], "a directory: an error, got \"%s\"", err);
}

static void test_split_arg(void) {
    char a[] = "/nonexistent/run/log.jsonl=fp8 rowwise", b[64];
    const char *path, *label;
    split_arg(a, &path, &label);
    TEST_CHECK(!strcmp(path, "/nonexistent/run/log.jsonl") && label && !strcmp(label, "fp8 rowwise"), "PATH=LABEL");
    const char *p = write_log("x=y.jsonl", "{\"step\": 1, \"loss\": 2}\n");
    char c[1024];
    snprintf(c, sizeof c, "%s", p);
    split_arg(c, &path, &label);
    TEST_CHECK(!strcmp(path, p) && !label, "an existing file with '=' in its name is a path");
    snprintf(b, sizeof b, "plain.jsonl");
    split_arg(b, &path, &label);
    TEST_CHECK(!strcmp(path, "plain.jsonl") && !label, "no '=': a path");
}

// Runs a command, returns its exit status and its output (stdout + stderr, caller frees).
static int run_cmd(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    if (!p) { *out = NULL; return -1; }
    size_t cap = 1 << 14, n = 0;
    char *buf = ao_malloc(cap);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n - 1, p)) > 0)
        if ((n += k) + 1 == cap) buf = ao_realloc(buf, cap *= 2);
    buf[n] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_tool(const char *argv0) {
    char tool[1024], dir[1024];
    snprintf(dir, sizeof dir, "%s", argv0);
    snprintf(tool, sizeof tool, "%s/../plot_runs", dirname(dir));  // $(BUILD)/test/.. = $(BUILD)
    if (!file_exists(tool)) {
        test_skip("the plot_runs binary is not beside the test's directory (make $(BUILD)/plot_runs)");
        return;
    }
    const double va[] = {11.0, 6.0, 4.5}, vb[] = {11.0, 6.1, 4.59};
    char *ta = make_log(200, 100, va, 16.0), *tb = make_log(200, 100, vb, 14.0), cmd[8192], *out, svg[1024],
         a[1024], b[1024];
    snprintf(a, sizeof a, "%s", write_log("tool_a.jsonl", ta));
    snprintf(b, sizeof b, "%s", write_log("tool_b.jsonl", tb));
    snprintf(svg, sizeof svg, "%s/cmp.svg", g_dir);
    snprintf(cmd, sizeof cmd, "'%s' -o '%s' --title 'bf16 vs fp8' --from 100 '%s=bf16' '%s=fp8 <rowwise>' 2>&1", tool,
             svg, a, b);
    int rc = run_cmd(cmd, &out);
    TEST_CHECK(rc == 0 && contains(out, "+2.00%") && contains(out, "NO") && contains(out, "14.00"),
               "plot_runs on two good logs: rc %d, output:\n%s", rc, out);
    free(out);
    char *text = NULL, err[512];
    size_t len;
    int ok = read_file_all(svg, 1 << 20, &text, &len, err, sizeof err);
    TEST_CHECK(ok && contains(text, "<svg") && contains(text, "</svg>") && contains(text, ">bf16<") &&
                   contains(text, "fp8 &lt;rowwise&gt;") && contains(text, "bf16 vs fp8"),
               "the SVG is written, with both labels (escaped) and the title: %s", ok ? "" : err);
    if (ok) {
        int lines = 0;
        for (const char *q = text; (q = strstr(q, "<polyline")); q++) lines++;
        TEST_CHECK(lines == 2, "two curves, got %d", lines);
        free(text);
    }
    snprintf(cmd, sizeof cmd, "'%s' -o '%s' --metric train --smooth 10 '%s' 2>&1", tool, svg, a);
    rc = run_cmd(cmd, &out);
    TEST_CHECK(rc == 0 && contains(out, "mean of 10 steps"), "--metric train --smooth 10: rc %d:\n%s", rc, out);
    free(out);
    // failures: a corrupt log (named with its line), a log without evaluations, no logs, a bad metric
    char bad_s[1024], noval_s[1024];
    snprintf(bad_s, sizeof bad_s, "%s",
             write_log("tool_bad.jsonl", "{\"step\": 0, \"val_loss\": 9}\n{\"step\": 1, \"loss\": }\n"));
    snprintf(noval_s, sizeof noval_s, "%s", write_log("tool_noval.jsonl", "{\"step\": 1, \"loss\": 2}\n"));
    struct { const char *args, *needle; } fails[] = {
        {bad_s, "tool_bad.jsonl:2: not a JSON record"},
        {noval_s, "no \"val_loss\" records"},
        {"", "no logs given"},
        {"--metric loss x.jsonl", "--metric loss"},
    };
    for (size_t i = 0; i < sizeof fails / sizeof fails[0]; i++) {
        snprintf(cmd, sizeof cmd, "'%s' -o '%s/never.svg' %s%s%s 2>&1", tool, g_dir, i < 2 ? "'" : "", fails[i].args,
                 i < 2 ? "'" : "");
        rc = run_cmd(cmd, &out);
        TEST_CHECK(rc != 0 && contains(out, fails[i].needle), "plot_runs %s: rc %d, expected \"%s\" in:\n%s",
                   fails[i].args, rc, fails[i].needle, out);
        free(out);
    }
    char never[1024];
    snprintf(never, sizeof never, "%s/never.svg", g_dir);
    TEST_CHECK(!file_exists(never), "no SVG after a failure");
    free(ta), free(tb);
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(g_dir, sizeof g_dir, "%s", test_tmpdir("plot_runs"));
    test_read_and_table();
    test_resumed_and_cut_short();
    test_corrupt();
    test_split_arg();
    test_tool(argv[0]);
    return test_summary();
}
