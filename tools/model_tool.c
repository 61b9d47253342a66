// model_tool: inspect, convert and create Llama-family checkpoints in the Hugging Face
// layout (config.json + safetensors) without Python.
//   model_tool info DIR
//   model_tool convert IN_DIR OUT_DIR [--dtype float32|bfloat16]
//   model_tool init CONFIG_JSON OUT_DIR [--seed N] [--dtype float32|bfloat16]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../model/model.h"
#include "../model/safetensors.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: model_tool COMMAND ...\n"
            "  info DIR                               config summary and tensor table of a model directory\n"
            "  convert IN_DIR OUT_DIR [--dtype D]     load, validate and re-save (D: float32 | bfloat16; default float32)\n"
            "  init CONFIG_JSON OUT_DIR [--seed N] [--dtype D]\n"
            "                                         random Llama-style initialisation for a config.json\n");
}

// Parses the optional flags after the positional arguments.
static void parse_opts(int argc, char **argv, int first, int *bf16, unsigned long long *seed) {
    for (int i = first; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            const char *d = argv[++i];
            if (!strcmp(d, "bfloat16") || !strcmp(d, "bf16")) *bf16 = 1;
            else if (!strcmp(d, "float32") || !strcmp(d, "f32") || !strcmp(d, "fp32")) *bf16 = 0;
            else FAIL("--dtype %s: expected float32 or bfloat16", d);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc && seed) {
            char *end;
            *seed = strtoull(argv[++i], &end, 10);
            CHECK(*end == 0, "--seed %s: expected a non-negative integer", argv[i]);
        } else {
            usage(stderr);
            FAIL("unknown or incomplete option \"%s\"", argv[i]);
        }
    }
}

static int cmd_info(const char *dir) {
    char err[2048], desc[512];
    LlamaModel m;
    if (!model_load_hf(&m, dir, err, sizeof err)) FAIL("%s", err);
    config_describe(&m.cfg, desc, sizeof desc);
    printf("%s\n%s\n", dir, desc);
    SafeTensors st;
    if (!st_open_model(&st, dir, err, sizeof err)) FAIL("%s", err);
    printf("%d tensors in %d file%s\n", st.n, st.n_files, st.n_files > 1 ? "s" : "");
    for (int i = 0; i < m.tab.n; i++) {
        const ParamInfo *p = &m.tab.p[i];
        if (p->layer > 0) continue;  // one layer is representative
        const StTensor *t = st_find(&st, p->hf_name);
        printf("  %-48s %-5s [%lld%s%.0lld]\n", p->hf_name, st_dtype_name(t->dtype), (long long)p->shape[0],
               p->ndim == 2 ? ", " : "", p->ndim == 2 ? (long long)p->shape[1] : 0LL);
    }
    if (m.cfg.n_layers > 1) printf("  (layers 1..%d have the same tensors as layer 0)\n", m.cfg.n_layers - 1);
    st_close(&st);
    model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    char err[2048];
    const char *cmd = argv[1];
    if (!strcmp(cmd, "info")) {
        CHECK(argc == 3, "info takes one model directory (see model_tool --help)");
        return cmd_info(argv[2]);
    }
    int bf16 = 0;
    unsigned long long seed = 1337;
    LlamaModel m;
    if (!strcmp(cmd, "convert")) {
        CHECK(argc >= 4, "convert takes IN_DIR OUT_DIR (see model_tool --help)");
        parse_opts(argc, argv, 4, &bf16, NULL);
        if (!model_load_hf(&m, argv[2], err, sizeof err)) FAIL("%s", err);
    } else if (!strcmp(cmd, "init")) {
        CHECK(argc >= 4, "init takes CONFIG_JSON OUT_DIR (see model_tool --help)");
        parse_opts(argc, argv, 4, &bf16, &seed);
        LlamaConfig c;
        if (!config_load(&c, argv[2], err, sizeof err)) FAIL("%s", err);
        model_init(&m, &c);
        model_init_random(&m, seed);
    } else {
        usage(stderr);
        FAIL("unknown command \"%s\"", cmd);
    }
    if (!model_save_hf(&m, argv[3], bf16, err, sizeof err)) FAIL("%s", err);
    printf("wrote %s (%zu parameters, %s)\n", argv[3], config_num_params(&m.cfg), bf16 ? "bfloat16" : "float32");
    model_free(&m);
    return 0;
}
