#include "flags.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static void value_str(const Flag *f, char *buf, size_t n) {
    switch (f->type) {
        case FLAG_INT: snprintf(buf, n, "%d", *(int *)f->dst); break;
        case FLAG_FLOAT: snprintf(buf, n, "%g", *(float *)f->dst); break;
        case FLAG_STR: snprintf(buf, n, "%s", *(const char **)f->dst ? *(const char **)f->dst : "(none)"); break;
        case FLAG_BOOL: snprintf(buf, n, "%s", *(int *)f->dst ? "on" : "off"); break;
    }
}

void flags_usage(FILE *out, const Flag *flags, int n, const char *prog, const char *synopsis) {
    fprintf(out, "usage: %s %s\n\n", prog, synopsis);
    for (int i = 0; i < n; i++) {
        char names[64], def[256];
        snprintf(names, sizeof names, "%s%s%s%s", flags[i].alias ? flags[i].alias : "", flags[i].alias ? ", " : "",
                 flags[i].name, flags[i].type == FLAG_BOOL ? "[=off]" : flags[i].type == FLAG_STR ? " S" : " N");
        value_str(&flags[i], def, sizeof def);
        fprintf(out, "  %-26s %s (default: %s)\n", names, flags[i].help, def);
    }
}

void flags_print(FILE *out, const Flag *flags, int n) {
    for (int i = 0; i < n; i++) {
        char v[256];
        value_str(&flags[i], v, sizeof v);
        fprintf(out, "  %-22s %s\n", flags[i].name + 2, v);
    }
}

static void set_value(const Flag *f, const char *v) {
    char *end;
    errno = 0;
    if (f->type == FLAG_INT) {
        long x = strtol(v, &end, 10);
        CHECK(*v && *end == 0 && errno == 0 && x >= -2147483647L && x <= 2147483647L,
              "%s expects an integer, got \"%s\"", f->name, v);
        CHECK(f->lo > f->hi || (x >= f->lo && x <= f->hi), "%s = %ld is out of range [%g, %g]", f->name, x, f->lo, f->hi);
        *(int *)f->dst = (int)x;
    } else if (f->type == FLAG_FLOAT) {
        double x = strtod(v, &end);
        CHECK(*v && *end == 0 && errno == 0 && isfinite(x), "%s expects a number, got \"%s\"", f->name, v);
        CHECK(f->lo > f->hi || (x >= f->lo && x <= f->hi), "%s = %g is out of range [%g, %g]", f->name, x, f->lo, f->hi);
        *(float *)f->dst = (float)x;
    } else if (f->type == FLAG_STR) {
        *(const char **)f->dst = v;
    } else {
        if (!strcmp(v, "1") || !strcmp(v, "on") || !strcmp(v, "true")) *(int *)f->dst = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "false")) *(int *)f->dst = 0;
        else FAIL("%s expects on/off, got \"%s\"", f->name, v);
    }
}

int flags_parse(const Flag *flags, int n, int argc, char **argv, const char *prog, const char *synopsis) {
    return flags_parse_pos(flags, n, argc, argv, prog, synopsis, NULL, NULL);
}

int flags_parse_pos(const Flag *flags, int n, int argc, char **argv, const char *prog, const char *synopsis,
                    char **pos, int *n_pos) {
    if (n_pos) *n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (pos && (a[0] != '-' || !strcmp(a, "-"))) {
            pos[(*n_pos)++] = argv[i];
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            flags_usage(stdout, flags, n, prog, synopsis);
            return 0;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const Flag *f = NULL;
        for (int k = 0; k < n && !f; k++) {
            if ((strlen(flags[k].name) == len && !strncmp(flags[k].name, a, len)) ||
                (flags[k].alias && strlen(flags[k].alias) == len && !strncmp(flags[k].alias, a, len)))
                f = &flags[k];
        }
        if (!f) {
            flags_usage(stderr, flags, n, prog, synopsis);
            FAIL("unknown argument \"%s\" (see %s --help)", a, prog);
        }
        if (eq) set_value(f, eq + 1);
        else if (f->type == FLAG_BOOL) {
            // "--flag off" reads as "--flag=off" when the next word is a boolean literal
            const char *nx = i + 1 < argc ? argv[i + 1] : "";
            if (!strcmp(nx, "on") || !strcmp(nx, "off") || !strcmp(nx, "true") || !strcmp(nx, "false"))
                set_value(f, argv[++i]);
            else *(int *)f->dst = 1;
        }
        else {
            CHECK(i + 1 < argc, "%s needs a value (see %s --help)", f->name, prog);
            set_value(f, argv[++i]);
        }
    }
    return 1;
}
