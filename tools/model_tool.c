// model_tool: inspect, convert and create Llama-family checkpoints in the Hugging Face
// layout (config.json + safetensors) without Python.
//   model_tool info DIR
//   model_tool convert IN_DIR OUT_DIR [--dtype float32|bfloat16]
//   model_tool init CONFIG_JSON OUT_DIR [--seed N] [--dtype float32|bfloat16]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../common/flags.h"
#include "../model/model.h"
#include "../quant/qmodel.h"
#include "../model/safetensors.h"

static const char *SYNOPSIS =
    "COMMAND ...\n"
    "  info DIR                               config summary and tensor table of a model directory\n"
    "                                         (or mode, group and qparams of an infer_llama -o directory)\n"
    "  convert IN_DIR OUT_DIR [--dtype D]     load, validate and re-save (D: float32 | bfloat16)\n"
    "  init CONFIG_JSON OUT_DIR [--seed N] [--dtype D]\n"
    "                                         random Llama-style initialisation for a config.json";
static const char *g_dtype = "float32";
static int g_seed = -1;
static const Flag FLAGS[] = {
    {"--dtype", NULL, FLAG_STR, &g_dtype, "weights to write: float32 (f32, fp32) or bfloat16 (bf16)", 1, 0},
    {"--seed", NULL, FLAG_INT, &g_seed, "init: random seed (default 1337)", 0, 2147483647},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

// A directory written by infer_llama -o: mode, group, qparams, how many linears are quantized.
static int cmd_info_quantized(const char *dir) {
    InferModel im;
    qmodel_load(&im, dir);
    char desc[512];
    config_describe(&im.cfg, desc, sizeof desc);
    printf("%s\n%s\n", dir, desc);
    printf("quantized by infer_llama -o: %s", quant_mode_name(im.mode));
    if (im.group) printf(", group %d", im.group);
    if (im.mode == QUANT_INT4) printf(", qparams %s", im.hqq ? "hqq" : "tinygemm");
    printf("; %d of %d linears quantized; %.1f MiB of weights\n", im.n_quantized, im.n_linear,
           (double)infer_model_bytes(&im) / 1048576.0);
    infer_model_free(&im);
    return 0;
}

static int cmd_info(const char *dir) {
    if (qmodel_is_quantized_dir(dir)) return cmd_info_quantized(dir);
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
    char **pos = ao_calloc((size_t)argc + 1, sizeof *pos);
    int np = 0;
    if (!flags_parse_pos(FLAGS, N_FLAGS, argc, argv, "model_tool", SYNOPSIS, pos, &np)) { free(pos); return 0; }
    if (np < 1) {
        flags_usage(stderr, FLAGS, N_FLAGS, "model_tool", SYNOPSIS);
        FAIL("give a command: info, convert or init");
    }
    char err[2048];
    const char *cmd = pos[0];
    int bf16 = 0;
    if (!strcmp(g_dtype, "bfloat16") || !strcmp(g_dtype, "bf16")) bf16 = 1;
    else CHECK(!strcmp(g_dtype, "float32") || !strcmp(g_dtype, "f32") || !strcmp(g_dtype, "fp32"),
               "--dtype %s: expected float32 or bfloat16", g_dtype);
    CHECK(g_seed < 0 || !strcmp(cmd, "init"), "--seed applies to init only");
    int rc = 0;
    if (!strcmp(cmd, "info")) {
        CHECK(np == 2, "info takes one model directory (see model_tool --help)");
        rc = cmd_info(pos[1]);
        free(pos);
        return rc;
    }
    LlamaModel m;
    if (!strcmp(cmd, "convert")) {
        CHECK(np == 3, "convert takes IN_DIR OUT_DIR (see model_tool --help)");
        if (!model_load_hf(&m, pos[1], err, sizeof err)) FAIL("%s", err);
    } else if (!strcmp(cmd, "init")) {
        CHECK(np == 3, "init takes CONFIG_JSON OUT_DIR (see model_tool --help)");
        LlamaConfig c;
        if (!config_load(&c, pos[1], err, sizeof err)) FAIL("%s", err);
        model_init(&m, &c);
        model_init_random(&m, (uint64_t)(g_seed < 0 ? 1337 : g_seed));
    } else {
        flags_usage(stderr, FLAGS, N_FLAGS, "model_tool", SYNOPSIS);
        FAIL("unknown command \"%s\"", cmd);
    }
    if (!model_save_hf(&m, pos[2], bf16, err, sizeof err)) FAIL("%s", err);
    printf("wrote %s (%zu parameters, %s)\n", pos[2], config_num_params(&m.cfg), bf16 ? "bfloat16" : "float32");
    model_free(&m);
    free(pos);
    return rc;
}
