// One table declares every command-line flag once: name, type, default, help. The same
// table parses argv, prints --help and prints the settings at start-up, so help never
// drifts from behaviour. Unknown flags, missing values and malformed numbers are errors.
#ifndef LLAMA_AO_COMMON_FLAGS_H
#define LLAMA_AO_COMMON_FLAGS_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FLAG_INT, FLAG_FLOAT, FLAG_STR, FLAG_BOOL } FlagType;

typedef struct {
    const char *name;   // "--lr"
    const char *alias;  // "-l" or NULL
    FlagType type;
    void *dst;          // int*, float*, const char**, int* (bool)
    const char *help;
    double lo, hi;      // numeric range (ignored when lo > hi)
} Flag;

// Parses argv[1..]: flags may be "--name value", "--name=value", or a bare "--name" for
// bools. Returns 0 when --help was given (usage printed), 1 otherwise; fails on errors.
int flags_parse(const Flag *flags, int n, int argc, char **argv, const char *prog, const char *synopsis);
// The same, collecting arguments that are not flags (no leading '-', or exactly "-")
// into pos (room for argc entries) and their count into *n_pos.
int flags_parse_pos(const Flag *flags, int n, int argc, char **argv, const char *prog, const char *synopsis,
                    char **pos, int *n_pos);
void flags_usage(FILE *f, const Flag *flags, int n, const char *prog, const char *synopsis);
// Prints "name = value" for every flag.
void flags_print(FILE *f, const Flag *flags, int n);

#ifdef __cplusplus
}
#endif
#endif
