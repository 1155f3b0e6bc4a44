/*
 * graph.cu: recorded training steps (backend.h: graph_begin, graph_end,
 * graph_launch, graph_free, step_values), on CUDA graphs.
 *
 * A training step queues about 540 kernels; queued one by one, the GPU idles
 * a few microseconds between them (about 1.8 ms of the base model's 30 ms
 * step on an H200). Recorded once as a graph (stream capture) and replayed,
 * the same kernels run with shorter gaps. What a replay must not reuse from
 * the recording are the step's own values: the dropout seed (each step draws
 * new masks) and the scale of the loss gradient (1 / the step's target
 * tokens). Those live in two slots of device memory, written by step_values
 * before every run; an op that draws dropout, recorded, takes its key from
 * the seed's slot on the device (tfm_cuda_seed_slot: fused.cu,
 * elementwise.cu), the loss gradient its scale from the scale's slot
 * (xent.cu). An op that would bake a per-step value into the recording
 * instead (a dropout path without the slot) refuses the recording
 * (tfm_cuda_capture_refuse): graph_end then returns NULL and the trainer runs
 * the step directly.
 *
 * A recording holds device pointers: the model's buffers (fixed for a
 * workspace), and this backend's grow-only buffers (gemm.cu's bf16 copies,
 * the scratch buffer, ffn.cu's vector), which move when they grow. Every
 * such move, and every change of the matmul precision, makes the recordings
 * stale (tfm_cuda_graphs_stale): graph_launch then refuses them. Growing
 * waits for the GPU and frees memory, which a stream being captured cannot
 * do: the trainer records a batch shape only after it has run it directly
 * (src/train/trainer.c), so the buffers are already as large as it needs.
 */
#include "cuda/cuda_internal.cuh"

/* The per-step values, on the device (slot) and as last written (host). */
typedef struct step_slots {
    uint64_t seed;
    float loss_scale;
} step_slots;
static step_slots *g_slots;
static step_slots g_host;

static int g_capturing;          /* a stream capture is under way */
static const char *g_refused;    /* why the capture under way cannot be used (NULL: it can) */
static unsigned long g_epoch;    /* bumped whenever recordings go stale */
static unsigned long g_capture_epoch;

typedef struct recording {
    cudaGraphExec_t exec;
    unsigned long epoch;
} recording;

void tfm_cuda_graphs_stale(void) { g_epoch++; }

int tfm_cuda_capturing(void) { return g_capturing; }

void tfm_cuda_capture_refuse(const char *why) {
    if (g_capturing && !g_refused) g_refused = why;
}

const uint64_t *tfm_cuda_seed_slot(uint64_t seed) {
    if (!g_capturing) return NULL;
    if (seed != g_host.seed) tfm_cuda_capture_refuse("a dropout seed other than the step's");
    return &g_slots->seed;
}

const float *tfm_cuda_scale_slot(float scale) {
    if (!g_capturing) return NULL;
    if (scale != g_host.loss_scale) tfm_cuda_capture_refuse("a loss scale other than the step's");
    return &g_slots->loss_scale;
}

static void slots_alloc(void) {
    if (!g_slots) TFM_CUDA_CHECK(cudaMalloc(&g_slots, sizeof *g_slots));
}

void tfm_cuda_step_values(uint64_t seed, float loss_scale) {
    slots_alloc();
    g_host.seed = seed;
    g_host.loss_scale = loss_scale;
    /* From pageable memory: staged before the call returns (g_host may change
     * at once), applied in stream order. */
    TFM_CUDA_CHECK(cudaMemcpyAsync(g_slots, &g_host, sizeof g_host, cudaMemcpyHostToDevice, tfm_cuda_stream()));
}

int tfm_cuda_graph_begin(void) {
    if (g_capturing) return 0;
    slots_alloc();
    if (cudaStreamBeginCapture(tfm_cuda_stream(), cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    g_capturing = 1;
    g_refused = NULL;
    g_capture_epoch = g_epoch;
    return 1;
}

void *tfm_cuda_graph_end(void) {
    if (!g_capturing) return NULL;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(tfm_cuda_stream(), &graph);
    g_capturing = 0;
    recording *r = NULL;
    if (e == cudaSuccess && !g_refused && g_capture_epoch == g_epoch) {
        cudaGraphExec_t exec;
        if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
            (void)cudaGetLastError();
        } else if (!(r = (recording *)malloc(sizeof *r))) {
            (void)cudaGraphExecDestroy(exec);
        } else {
            r->exec = exec;
            r->epoch = g_epoch;
        }
    } else {
        (void)cudaGetLastError(); /* an invalidated capture is not an error of the next op */
    }
    if (getenv("TFM_GRAPH_VERBOSE"))
        fprintf(stderr, "cuda graph: %s%s\n", r ? "recorded" : "not recorded: ",
                r ? "" : g_refused ? g_refused : e != cudaSuccess ? cudaGetErrorString(e) : "buffers moved");
    if (graph) (void)cudaGraphDestroy(graph);
    return r;
}

int tfm_cuda_graph_launch(void *graph) {
    recording *r = (recording *)graph;
    if (!r || r->epoch != g_epoch) return 0;
    TFM_CUDA_CHECK(cudaGraphLaunch(r->exec, tfm_cuda_stream()));
    return 1;
}

void tfm_cuda_graph_free(void *graph) {
    recording *r = (recording *)graph;
    if (!r) return;
    TFM_CUDA_CHECK(cudaGraphExecDestroy(r->exec));
    free(r);
}
