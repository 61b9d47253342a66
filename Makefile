# llama.ao build. `make` builds what this machine can build and prints what it found.
#   make              CPU library, infer_llama, tools, CPU tests; CUDA objects when nvcc exists
#   make test         CPU test suite (ends with "N passed, N failed")
#   make test-gpu     GPU test suite (needs a GPU)
#   make SANITIZE=1   ASan + UBSan build into build-san/
#   make GPU_ARCH=sm_90a  override the CUDA architecture (default sm_90a)
# Sources are picked up by directory: a new ops/foo.c or ops/foo.cu needs no Makefile edit;
# a new test is test/test_<name>.c (CPU) or test/gpu_test_<name>.cu (GPU).

CC ?= gcc
ifeq ($(CC),cc)
CC := gcc
endif
OPT ?= -O2
WERROR ?=
CFLAGS_BASE := -std=gnu11 $(OPT) -g -Wall -Wextra $(WERROR) -fno-strict-aliasing -MMD -MP
LDLIBS := -lm -lpthread

ifeq ($(SANITIZE),1)
BUILD ?= build-san
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD ?= build
CFLAGS_BASE += -march=x86-64-v2
endif

# ---- detection ---------------------------------------------------------------------------
OPENMP := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo 1)
ifeq ($(OPENMP),1)
CFLAGS_BASE += -fopenmp
LDFLAGS += -fopenmp
endif

CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda) $(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null)))
NVCC := $(firstword $(wildcard $(CUDA_HOME)/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
GPU_ARCH ?= sm_90a
INC_DIRS := $(CUDA_HOME)/include /usr/include /usr/include/x86_64-linux-gnu /usr/local/include
find_header = $(firstword $(foreach d,$(INC_DIRS),$(wildcard $(d)/$(1))))
CUBLASLT_H := $(call find_header,cublasLt.h)
CUDNN_H := $(call find_header,cudnn.h)
NCCL_H := $(call find_header,nccl.h)
MPICC := $(shell command -v mpicc 2>/dev/null)
MPI_H := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h /usr/include/mpi.h))

yesno = $(if $(1),✓,✗)
ifeq ($(MAKELEVEL),0)
ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),all)),)
$(info ---- llama.ao build configuration ----)
$(info $(call yesno,$(OPENMP)) OpenMP)
$(info $(call yesno,$(NVCC)) nvcc $(if $(NVCC),($(NVCC)) -> $(GPU_ARCH),(CUDA parts skipped)))
$(info $(call yesno,$(CUBLASLT_H)) cuBLASLt $(CUBLASLT_H))
$(info $(call yesno,$(CUDNN_H)) cuDNN $(CUDNN_H))
$(info $(call yesno,$(NCCL_H)) NCCL $(NCCL_H))
$(info $(call yesno,$(or $(MPICC),$(MPI_H))) OpenMPI $(or $(MPICC),$(MPI_H)))
$(info $(if $(filter 1,$(SANITIZE)),✓ sanitizer build (ASan+UBSan) into $(BUILD),  plain build into $(BUILD)))
$(info --------------------------------------)
endif
endif

# ---- sources -------------------------------------------------------------------------------
LIB_DIRS := common model ops quant optim data
LIB_SRC := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
LIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
LIB := $(BUILD)/libao.a

TEST_SRC := $(wildcard test/test_*.c)
TEST_BIN := $(patsubst test/%.c,$(BUILD)/test/%,$(TEST_SRC))
TEST_HARNESS := $(BUILD)/test/test.o
# Checkers several test programs share: test/<subject>_checks.c (+ .h). They go into one
# archive linked into every test program, so each takes only the objects it calls.
TEST_CHECKS_OBJ := $(patsubst test/%.c,$(BUILD)/test/%.o,$(wildcard test/*_checks.c))
TEST_CHECKS := $(if $(TEST_CHECKS_OBJ),$(BUILD)/test/libchecks.a)

TOOL_SRC := $(wildcard tools/*.c)
TOOL_BIN := $(patsubst tools/%.c,$(BUILD)/%,$(TOOL_SRC))

CU_SRC := $(foreach d,$(LIB_DIRS) dist,$(wildcard $(d)/*.cu))
CU_OBJ := $(patsubst %.cu,$(BUILD)/cuda/%.o,$(CU_SRC))
GPU_TEST_SRC := $(wildcard test/gpu_test_*.cu)
GPU_TEST_OBJ := $(patsubst test/%.cu,$(BUILD)/cuda/test/%.o,$(GPU_TEST_SRC))
GPU_TEST_BIN := $(patsubst test/%.cu,$(BUILD)/test/%,$(GPU_TEST_SRC))
# GPU benchmarks: dev/bench/<name>.cu -> $(BUILD)/bench/<name> (make bench)
BENCH_SRC := $(wildcard dev/bench/*.cu)
BENCH_BIN := $(patsubst dev/bench/%.cu,$(BUILD)/bench/%,$(BENCH_SRC))

# dist/ (multi-GPU) uses NCCL and MPI when they are found; without them train_llama runs on one GPU
# and says so when started with more ranks. MPI's directories come from OpenMPI's mpicc.
MPI_INCDIRS := $(or $(if $(MPICC),$(shell $(MPICC) --showme:incdirs 2>/dev/null)),$(if $(MPI_H),$(patsubst %/,%,$(dir $(MPI_H)))))
MPI_LIBDIRS := $(if $(MPICC),$(shell $(MPICC) --showme:libdirs 2>/dev/null))
MPI_OK := $(firstword $(wildcard $(addsuffix /mpi.h,$(MPI_INCDIRS))))
NVCCFLAGS := -O3 -g -std=c++17 -arch=$(GPU_ARCH) --expt-relaxed-constexpr -Xcompiler -Wall,-Wextra,-fopenmp -MMD -MP \
	$(if $(CUDNN_H),-DLLAMA_AO_CUDNN) $(if $(NCCL_H),-DLLAMA_AO_NCCL) \
	$(if $(MPI_OK),-DLLAMA_AO_MPI $(addprefix -I,$(MPI_INCDIRS)))
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart $(if $(CUDNN_H),-lcudnn) $(if $(NCCL_H),-lnccl) \
	$(if $(MPI_OK),$(addprefix -L,$(MPI_LIBDIRS)) -lmpi)

.PHONY: all cuda test test-gpu clean data bench

# Tokenized bundled corpus (Austen + Brown, GPT-2 BPE) for the default training run.
SHARDS := data/shards/corpus_train.bin data/shards/corpus_val.bin
data: $(SHARDS)
$(SHARDS) &: $(BUILD)/tokenize data/corpus/austen.txt data/corpus/brown.txt
	@mkdir -p data/shards
	$(BUILD)/tokenize -t data/tokenizer/gpt2 -o data/shards/corpus --val-fraction 0.05 data/corpus/austen.txt data/corpus/brown.txt

# The training program (CUDA): ./train_llama at the top level, as the README runs it.
train_llama: train_llama.cu $(CU_OBJ) $(LIB)
	@test -n "$(NVCC)" || { echo "train_llama needs nvcc (CUDA Toolkit); none was found"; exit 1; }
	$(NVCC) $(NVCCFLAGS) -MF $(BUILD)/train_llama.d train_llama.cu $(CU_OBJ) $(LIB) -o $@ -Xcompiler -fopenmp $(CUDA_LIBS) -lm

# The inference program: ./infer_llama at the top level, as the README runs it. C on the
# CPU; with nvcc it also links the GPU backend (model/infer_gpu*.cu, quant/qgemv*.cu: the CUDA
# runtime and cuBLASLt for the prefill GEMMs, no cuDNN/NCCL) and -d cuda works.
INFER_CU_OBJ := $(if $(NVCC),$(BUILD)/cuda/model/infer_gpu.o $(BUILD)/cuda/model/infer_gpu_prefill.o $(BUILD)/cuda/quant/qgemv.o \
	$(BUILD)/cuda/quant/qgemv_int4mma.o $(BUILD)/cuda/quant/qgemv_upload.o)
infer_llama: infer_llama.c $(LIB) $(INFER_CU_OBJ)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $(if $(NVCC),-DLLAMA_AO_CUDA) -MF $(BUILD)/infer_llama.d $< $(INFER_CU_OBJ) $(LIB) -o $@ \
		$(LDFLAGS) $(if $(NVCC),-L$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++) $(LDLIBS)

all: $(LIB) $(TEST_BIN) $(TOOL_BIN) $(if $(wildcard infer_llama.c),infer_llama) $(if $(NVCC),cuda train_llama)

cuda: $(CU_OBJ) $(GPU_TEST_OBJ) $(patsubst dev/bench/%.cu,$(BUILD)/cuda/dev/bench/%.o,$(BENCH_SRC))

bench: $(BENCH_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(TEST_HARNESS): test/test.c test/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c $< -o $@

$(BUILD)/test/%_checks.o: test/%_checks.c test/%_checks.h test/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c $< -o $@

$(BUILD)/test/libchecks.a: $(TEST_CHECKS_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/test/%: test/%.c $(LIB) $(TEST_HARNESS) $(TEST_CHECKS) $(wildcard test/*_checks.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $< $(TEST_HARNESS) $(TEST_CHECKS) $(LIB) -o $@ $(LDFLAGS) $(LDLIBS)

$(BUILD)/%: tools/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $< $(LIB) -o $@ $(LDFLAGS) $(LDLIBS)

$(BUILD)/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/test/gpu_test_%: $(BUILD)/cuda/test/gpu_test_%.o $(CU_OBJ) $(LIB) $(TEST_HARNESS)
	$(NVCC) -arch=$(GPU_ARCH) $^ -o $@ -Xcompiler -fopenmp $(CUDA_LIBS) -lm

$(BUILD)/bench/%: $(BUILD)/cuda/dev/bench/%.o $(CU_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(NVCC) -arch=$(GPU_ARCH) $^ -o $@ -Xcompiler -fopenmp $(CUDA_LIBS) -lm

test: $(LIB) $(TEST_BIN) $(TOOL_BIN)
	@bash test/run_tests.sh $(BUILD) $(TEST_BIN)

test-gpu: $(GPU_TEST_BIN)
	@bash test/run_tests.sh $(BUILD) $(GPU_TEST_BIN)

clean:
	rm -rf build build-san train_llama

-include $(LIB_OBJ:.o=.d) $(CU_OBJ:.o=.d)
