/* ops_decl.h: the op prototypes over `real`; included twice by ops.h. */

/* C[M,N] = alpha * op(A) op(B) + beta * C, row-major, CBLAS contract
 * (op(A) is [M,K]; lda/ldb/ldc are row strides of the stored matrices). */
void OPFN(tfm_gemm)(int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A,
                    int lda, const real *B, int ldb, real beta, real *C, int ldc);

/* C[M,N] = A[M,K] B[N,K]^T + bias[N] (added to every row; bias may be NULL),
 * row-major: the product of a linear layer's forward. With the own AVX-512
 * kernel the bias goes in as the kernel stores C (gemm.c). */
void OPFN(tfm_gemm_nt_bias)(int M, int N, int K, const real *A, int lda, const real *B, int ldb,
                            const real *bias, real *C, int ldc);

/* C[M,N] = A[K,M]^T B[K,N] + beta C, row-major (a linear layer's weight
 * gradient, A = dout), and sums[M] += the column sums of A (its bias
 * gradient). Either C or sums may be NULL (skipped). With the own AVX-512
 * kernel the sums are taken while it packs A (gemm.c). */
void OPFN(tfm_gemm_tn_sums)(int M, int N, int K, const real *A, int lda, const real *B, int ldb, real beta,
                            real *C, int ldc, real *sums);

/* out[N,O] = in[N,I] w[O,I]^T + b[O]  (I = n_in, O = n_out;
 * PyTorch nn.Linear layout; b may be NULL) */
void OPFN(tfm_linear_forward)(real *out, const real *in, const real *w, const real *b, int N,
                              int n_in, int n_out);
/* din[N,I] (= or += when accumulate) dout[N,O] w;  dw[O,I] += dout^T in;  db[O] += sum dout.
 * din, db may be NULL. */
void OPFN(tfm_linear_backward)(real *din, real *dw, real *db, const real *dout, const real *in,
                               const real *w, int N, int n_in, int n_out, int accumulate);

/* out[N,D] = table[ids[n]] * scale */
void OPFN(tfm_embedding_forward)(real *out, const int32_t *ids, const real *table, int N, int D,
                                 real scale);
/* dtable[ids[n]] += dout[n] * scale */
void OPFN(tfm_embedding_backward)(real *dtable, const real *dout, const int32_t *ids, int N,
                                  int D, real scale);

/* table[P,D]: PE(p,2i) = sin(p / 10000^(2i/D)), PE(p,2i+1) = cos(same) (paper 3.5) */
void OPFN(tfm_sinusoidal_table)(real *table, int P, int D);
/* x[n] += table[pos[n]]   (sinusoidal or learned positions) */
void OPFN(tfm_positions_forward)(real *x, const real *table, const int32_t *pos, int N, int D);
/* dtable[pos[n]] += dx[n]   (learned positions) */
void OPFN(tfm_positions_backward)(real *dtable, const real *dx, const int32_t *pos, int N, int D);
/* Rotary positions, rotate-half form, in place on H heads of size dk at the
 * start of each row of x (row stride `row`): for i < dk/2, angle pos[n] *
 * theta^(-2i/dk), (x_i, x_{i+dk/2}) -> (x_i cos - x_{i+dk/2} sin, x_{i+dk/2} cos + x_i sin).
 * inverse = 1 rotates by minus the angle, which is the backward of the forward. */
void OPFN(tfm_rope)(real *x, long row, const int32_t *pos, int N, int H, int dk, double theta,
                    int inverse);

/* out[N,D] = (in - mean) * rstd * w + b; saves mean[N], rstd[N] */
void OPFN(tfm_layernorm_forward)(real *out, real *mean, real *rstd, const real *in, const real *w,
                                 const real *b, int N, int D, real eps);
/* din[N,D] (= or += when accumulate); dw[D] += ; db[D] += */
void OPFN(tfm_layernorm_backward)(real *din, real *dw, real *db, const real *dout, const real *in,
                                  const real *mean, const real *rstd, const real *w, int N, int D,
                                  int accumulate);

/* The row pieces both LayerNorm ops (plain and fused) share: one forward row
 * (y, its mean and rstd), and the two row means of the input gradient,
 * mg = mean(dy * w), mgx = mean(dy * w * xhat), summed in double. */
void OPFN(tfm_layernorm_row)(real *y, real *mean, real *rstd, const real *x, const real *w, const real *b,
                             int D, real eps);
void OPFN(tfm_layernorm_din_means)(real *mg, real *mgx, const real *dy, const real *x, const real *w, real m,
                                   real s, int D);
/* dw[D] += sum_n dout[n] * (in[n] - mean[n]) * rstd[n];  db[D] += sum_n dout[n]
 * (the parameter part of tfm_layernorm_backward, in its fixed sum order) */
void OPFN(tfm_layernorm_dparams)(real *dw, real *db, const real *dout, const real *in, const real *mean,
                                 const real *rstd, int N, int D);

/* out[n] = act(in[n]); out may alias in only for ReLU */
void OPFN(tfm_activation_forward)(real *out, const real *in, size_t n, tfm_act_kind kind);
/* din[n] = dout[n] * act'(in[n])   (=; din may alias dout) */
void OPFN(tfm_activation_backward)(real *din, const real *dout, const real *in, size_t n,
                                   tfm_act_kind kind);

/* out[n] = in[n] * keep(n) / (1 - p), keep(n) = uniform(seed, stream, n) >= p.
 * Its own backward (apply to the gradient with the same seed and stream).
 * out may alias in; p == 0 copies. */
void OPFN(tfm_dropout)(real *out, const real *in, size_t n, float p, uint64_t seed,
                       uint64_t stream);
/* out[n] = x[n] + dropout(y)[n]   (residual connection; out may alias x).
 * Backward: dx = dout, dy = tfm_dropout(dout). */
void OPFN(tfm_residual_dropout)(real *out, const real *x, const real *y, size_t n, float p,
                                uint64_t seed, uint64_t stream);

/* Fused element-wise ops (fused.c): one pass where the model ran two, with
 * the arithmetic of the composition, so the same bits. Dropout element
 * indices are those of the flattened [N, D] or [n] arrays, as above. */
/* res[N,D] = x + dropout(y) (tfm_residual_dropout), then ln[N,D] =
 * LayerNorm(res) with mean[N], rstd[N] saved (tfm_layernorm_forward).
 * res may alias x; ln aliases nothing. The post-LN block's output. */
void OPFN(tfm_residual_dropout_layernorm)(real *res, real *ln, real *mean, real *rstd, const real *x,
                                          const real *y, const real *w, const real *b, int N, int D,
                                          real eps, float p, uint64_t seed, uint64_t stream);
/* tfm_layernorm_backward with accumulate 0 (din[N,D] =; dw[D] +=; db[D] +=),
 * which also writes ddrop[N,D] = tfm_dropout(din) (=): the gradient of the
 * branch output y of tfm_residual_dropout_layernorm. No output aliases an input. */
void OPFN(tfm_layernorm_backward_dropout)(real *din, real *ddrop, real *dw, real *db, const real *dout,
                                          const real *in, const real *mean, const real *rstd,
                                          const real *w, int N, int D, float p, uint64_t seed,
                                          uint64_t stream);
/* out[n] = dropout(act(in))[n] (tfm_activation_forward, then tfm_dropout);
 * out may alias in. */
void OPFN(tfm_activation_dropout_forward)(real *out, const real *in, size_t n, tfm_act_kind kind,
                                          float p, uint64_t seed, uint64_t stream);
/* din[n] = act'(in[n]) * dropout(dout)[n] (=; tfm_dropout, then
 * tfm_activation_backward); din may alias dout. */
void OPFN(tfm_activation_dropout_backward)(real *din, const real *dout, const real *in, size_t n,
                                           tfm_act_kind kind, float p, uint64_t seed,
                                           uint64_t stream);

/* probs[B,H,Tq,Tk] = softmax(Q K^T * scale + masks) (saved before dropout);
 * out = dropout(probs) V; scratch[B,H,Tq,Tk] holds the dropped-out probabilities
 * (may be NULL when d->dropout == 0). Masked keys get probability exactly 0; a row with
 * every key masked gives all-zero probabilities and a zero output. */
void OPFN(tfm_attention_forward)(real *out, real *probs, real *scratch, const real *q,
                                 const real *k, const real *v, const tfm_attn_dims *d);
/* dq, dk, dv (=, same strides as q, k, v); scratch[B,H,Tq,Tk] is overwritten. */
void OPFN(tfm_attention_backward)(real *dq, real *dk, real *dv, real *scratch, const real *dout,
                                  const real *probs, const real *q, const real *k, const real *v,
                                  const tfm_attn_dims *d);

/* Tiled (memory-efficient) attention: the function of tfm_attention_forward
 * without keeping the [Tq, Tk] probabilities. Saves lse[B, H, Tq], each query
 * row's log-sum-exp of its scaled, unmasked scores (-INFINITY when every key
 * is masked; that row's output is zero), from which the backward recomputes
 * the probabilities a tile at a time; memory is linear in Tq and Tk.
 * scratch holds scratch_len reals, at least tfm_attention_tiled_scratch(d)
 * (a tile per thread). Dropout keeps the element indices of the [B, H, Tq, Tk]
 * layout, so both ops drop what tfm_attention_forward drops. */
void OPFN(tfm_attention_tiled_forward)(real *out, real *lse, real *scratch, size_t scratch_len,
                                       const real *q, const real *k, const real *v,
                                       const tfm_attn_dims *d);
/* dq, dk, dv (=, same strides as q, k, v) from dout and the forward's out and lse. */
void OPFN(tfm_attention_tiled_backward)(real *dq, real *dk, real *dv, real *scratch,
                                        size_t scratch_len, const real *dout, const real *out,
                                        const real *lse, const real *q, const real *k,
                                        const real *v, const tfm_attn_dims *d);

/* Label-smoothed cross-entropy over logits[N,V], as PyTorch's
 * cross_entropy(label_smoothing=eps, ignore_index=pad): per row
 * -(1-eps) logp[y] - eps/V sum_v logp[v]; rows whose target is pad_id count
 * nothing. Saves lse[N] (log-sum-exp); returns the summed loss (double) and
 * the number of counted rows in *count. */
double OPFN(tfm_xent_forward)(real *lse, const real *logits, const int32_t *targets, int N, int V,
                              int pad_id, real smoothing, long *count);
/* dlogits[N,V] (=, may alias logits) = scale * (softmax - smoothed one-hot);
 * zero on pad rows. scale is 1/count for a mean loss. */
void OPFN(tfm_xent_backward)(real *dlogits, const real *logits, const real *lse,
                             const int32_t *targets, int N, int V, int pad_id, real smoothing,
                             real scale);
/* out[N,V] = log_softmax(logits) (out may alias logits) */
void OPFN(tfm_log_softmax)(real *out, const real *logits, int N, int V);
