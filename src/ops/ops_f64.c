/* ops_f64.c: the reference ops compiled a second time over double, for the
 * finite-difference gradient checks (see real.h). */
#define TFM_OPS_F64 1
#include "gemm.c"
#include "linear.c"
#include "embedding.c"
#include "layernorm.c"
#include "activation.c"
#include "fused.c"
#include "attention.c"
#include "attention_tiled.c"
#include "xent.c"
