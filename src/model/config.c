/*
 * config.c: the model configuration: defaults, validation, JSON, CLI flags.
 *
 * One table (fields[] below) lists every field of tfm_config once, with its
 * JSON key, its kind and its offset. JSON parsing, JSON printing and
 * tfm_config_set all walk that table, so a new field is one row there plus its
 * checks in tfm_config_validate.
 *
 * What it does not do: it does not know how the model uses a field. Validation
 * checks each value and the relations the model relies on (divisibility, a
 * shared vocabulary where embeddings are tied, token ids in range, sizes below
 * sanity limits) and nothing more. Parsing does not validate: callers load a
 * file, apply command-line overrides, then call tfm_config_validate once.
 *
 * Numbers are parsed and printed in the "C" locale (cJSON, strtod, snprintf);
 * a program that switches LC_NUMERIC to another locale must switch it back.
 */
#include "core/atomic_file.h"
#include "core/status.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Sanity limits: far above any model this library is meant to train, low
 * enough that a typo (an extra zero or three) is caught here with a clear
 * message instead of as a failed multi-terabyte allocation later. */
#define TFM_MAX_LAYERS 1024
#define TFM_MAX_DIM 65536          /* d_model, d_k, d_v */
#define TFM_MAX_HEADS 4096
#define TFM_MAX_INNER (1 << 20)    /* heads * d_k and heads * d_v */
#define TFM_MAX_FF (1 << 20)
#define TFM_MAX_POSITIONS (1 << 20)
#define TFM_MAX_VOCAB (1 << 24)
#define TFM_MAX_JSON_BYTES (1 << 20) /* a configuration file is a few hundred bytes */

/* ------------------------------------------------------------ field table */

typedef enum field_kind { KIND_INT, KIND_FLOAT, KIND_BOOL, KIND_ENUM } field_kind;

typedef struct field {
    const char *name;           /* JSON key and struct field name */
    field_kind kind;
    size_t offset;
    const char *const *names;   /* KIND_ENUM: the value names, indexed by value */
    int n_names;
} field;

static const char *const activation_names[] = {"relu", "gelu"};
static const char *const norm_names[] = {"post", "pre"};
static const char *const positions_names[] = {"sinusoidal", "learned", "rope", "none"};
static const char *const share_names[] = {"none", "decoder", "all"};

/* Enum fields are read and written as int through memcpy; these make sure
 * that is their representation (it is not with -fshort-enums). */
_Static_assert(sizeof(tfm_activation) == sizeof(int), "enum size");
_Static_assert(sizeof(tfm_norm_placement) == sizeof(int), "enum size");
_Static_assert(sizeof(tfm_positions) == sizeof(int), "enum size");
_Static_assert(sizeof(tfm_sharing) == sizeof(int), "enum size");
_Static_assert(TFM_ACT_GELU == 1 && TFM_NORM_PRE == 1 && TFM_POS_NONE == 3 &&
                   TFM_SHARE_ALL == 2,
               "the name tables above follow the enum values");

#define F_INT(n) {#n, KIND_INT, offsetof(tfm_config, n), NULL, 0}
#define F_FLOAT(n) {#n, KIND_FLOAT, offsetof(tfm_config, n), NULL, 0}
#define F_BOOL(n) {#n, KIND_BOOL, offsetof(tfm_config, n), NULL, 0}
#define F_ENUM(n, t)                                                                 \
    {#n, KIND_ENUM, offsetof(tfm_config, n), t, (int)(sizeof t / sizeof t[0])}

/* In struct order, which is also the order of tfm_config_to_json's output. */
static const field fields[] = {
    F_INT(enc_layers),
    F_INT(dec_layers),
    F_INT(d_model),
    F_INT(heads),
    F_INT(d_k),
    F_INT(d_v),
    F_INT(d_ff),
    F_ENUM(activation, activation_names),
    F_ENUM(norm, norm_names),
    F_ENUM(positions, positions_names),
    F_INT(max_positions),
    F_FLOAT(rope_theta),
    F_INT(src_vocab),
    F_INT(tgt_vocab),
    F_ENUM(share, share_names),
    F_BOOL(embed_scale),
    F_FLOAT(dropout),
    F_FLOAT(attn_dropout),
    F_FLOAT(embed_dropout),
    F_FLOAT(act_dropout),
    F_FLOAT(ln_eps),
    F_FLOAT(label_smoothing),
    F_INT(pad_id),
    F_INT(bos_id),
    F_INT(eos_id),
};
#define N_FIELDS ((int)(sizeof fields / sizeof fields[0]))

static int get_int(const tfm_config *cfg, const field *f) {
    int v;
    memcpy(&v, (const char *)cfg + f->offset, sizeof v);
    return v;
}
static void put_int(tfm_config *cfg, const field *f, int v) {
    memcpy((char *)cfg + f->offset, &v, sizeof v);
}
static float get_float(const tfm_config *cfg, const field *f) {
    float v;
    memcpy(&v, (const char *)cfg + f->offset, sizeof v);
    return v;
}
static void put_float(tfm_config *cfg, const field *f, float v) {
    memcpy((char *)cfg + f->offset, &v, sizeof v);
}

/* The field whose name is exactly `name`, or NULL. */
static const field *find_field(const char *name) {
    for (int i = 0; i < N_FIELDS; i++)
        if (strcmp(fields[i].name, name) == 0) return &fields[i];
    return NULL;
}

/* ---------------------------------------------------------------- helpers */

/* Copies s into out (cap bytes) for an error message: printable ASCII as is,
 * anything else as \xNN, cut with "..." when long. Keeps hostile or binary
 * keys from corrupting a terminal. */
static const char *printable(char *out, size_t cap, const char *s) {
    size_t o = 0;
    TFM_ASSERT(cap >= 8);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[5];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            tmp[0] = (char)c;
            tmp[1] = '\0';
        } else if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            tmp[2] = '\0';
        } else {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
        }
        size_t n = strlen(tmp);
        if (o + n + 4 > cap) {
            memcpy(out + o, "...", 4);
            return out;
        }
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = '\0';
    return out;
}

/* Levenshtein distance of two short strings, dashes counted as underscores;
 * used only to suggest a field for a misspelled key or flag. */
static int edit_distance(const char *a, const char *b) {
    enum { MAXLEN = 40 };
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAXLEN || lb > MAXLEN) return INT_MAX;
    int prev[MAXLEN + 1], cur[MAXLEN + 1];
    for (size_t j = 0; j <= lb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            char ca = a[i - 1] == '-' ? '_' : a[i - 1];
            char cb = b[j - 1] == '-' ? '_' : b[j - 1];
            int best = prev[j - 1] + (ca != cb);
            if (prev[j] + 1 < best) best = prev[j] + 1;
            if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
            cur[j] = best;
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb];
}

/* " (did you mean \"d_model\"?)" for the closest field within distance 2, or "". */
static void suggestion(char *out, size_t cap, const char *name, int dashes) {
    const field *best = NULL;
    int best_d = 3;
    for (int i = 0; i < N_FIELDS; i++) {
        int d = edit_distance(name, fields[i].name);
        if (d < best_d) {
            best_d = d;
            best = &fields[i];
        }
    }
    out[0] = '\0';
    if (!best) return;
    char spelled[32];
    snprintf(spelled, sizeof spelled, "%s", best->name);
    if (dashes)
        for (char *p = spelled; *p; p++)
            if (*p == '_') *p = '-';
    snprintf(out, cap, " (did you mean %s%s%s?)", dashes ? "--" : "\"", spelled,
             dashes ? "" : "\"");
}

/* "\"relu\", \"gelu\"" */
static void enum_list(char *out, size_t cap, const field *f) {
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < f->n_names && o < cap; i++) {
        int n = snprintf(out + o, cap - o, "%s\"%s\"", i ? ", " : "", f->names[i]);
        if (n < 0) break;
        o += (size_t)n;
    }
}

static int enum_lookup(const field *f, const char *s) {
    for (int i = 0; i < f->n_names; i++)
        if (strcmp(f->names[i], s) == 0) return i;
    return -1;
}

/* --------------------------------------------------------------- defaults */

void tfm_config_default(tfm_config *cfg) {
    TFM_ASSERT(cfg != NULL);
    memset(cfg, 0, sizeof *cfg);
    cfg->enc_layers = 6;
    cfg->dec_layers = 6;
    cfg->d_model = 512;
    cfg->heads = 8;
    cfg->d_k = 0;
    cfg->d_v = 0;
    cfg->d_ff = 2048;
    cfg->activation = TFM_ACT_RELU;
    cfg->norm = TFM_NORM_POST;
    cfg->positions = TFM_POS_SINUSOIDAL;
    cfg->max_positions = 1024;
    cfg->rope_theta = 10000.0f;
    cfg->src_vocab = 32000;
    cfg->tgt_vocab = 32000;
    cfg->share = TFM_SHARE_ALL;
    cfg->embed_scale = 1;
    cfg->dropout = 0.1f;
    cfg->attn_dropout = 0.0f;
    cfg->embed_dropout = 0.1f;
    cfg->act_dropout = 0.0f;
    cfg->ln_eps = 1e-5f;
    cfg->label_smoothing = 0.1f;
    cfg->pad_id = 0;
    cfg->bos_id = 1;
    cfg->eos_id = 2;
}

int tfm_config_dk(const tfm_config *cfg) {
    TFM_ASSERT(cfg != NULL && cfg->heads > 0);
    return cfg->d_k > 0 ? cfg->d_k : cfg->d_model / cfg->heads;
}

int tfm_config_dv(const tfm_config *cfg) {
    TFM_ASSERT(cfg != NULL && cfg->heads > 0);
    return cfg->d_v > 0 ? cfg->d_v : cfg->d_model / cfg->heads;
}

/* ------------------------------------------------------------- validation */

/* Sets "config: <field>: <message>" and returns TFM_ERR_INVALID. */
static tfm_status invalid(const char *field_name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static tfm_status invalid(const char *field_name, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tfm_error(TFM_ERR_INVALID, "config: %s: %s", field_name, msg);
}

static tfm_status check_count(const char *name, int v, int lo, int hi, const char *what) {
    if (v < lo)
        return lo == 0 ? invalid(name, "must not be negative, got %d", v)
                       : invalid(name, "must be positive, got %d", v);
    if (v > hi) return invalid(name, "%d exceeds the sanity limit of %d %s", v, hi, what);
    return TFM_OK;
}

/* A probability p with 0 <= p < 1 (false for NaN). */
static tfm_status check_prob(const char *name, float p) {
    if (!(p >= 0.0f && p < 1.0f)) return invalid(name, "%g is outside [0, 1)", (double)p);
    return TFM_OK;
}

static tfm_status check_enum(const char *name, unsigned v, unsigned n, const char *values) {
    if (v >= n) return invalid(name, "%d is not a valid value (%s)", (int)v, values);
    return TFM_OK;
}

static tfm_status check_id(const char *name, int id, int vocab, const char *vocab_name) {
    if (id < 0 || id >= vocab)
        return invalid(name, "%d is outside [0, %s %d)", id, vocab_name, vocab);
    return TFM_OK;
}

tfm_status tfm_config_validate(const tfm_config *cfg) {
    TFM_ASSERT(cfg != NULL);
    const int enc = cfg->enc_layers > 0, dec = cfg->dec_layers > 0;

    /* Sizes first: the relations below divide by them. */
    TFM_TRY(check_count("enc_layers", cfg->enc_layers, 0, TFM_MAX_LAYERS, "layers"));
    TFM_TRY(check_count("dec_layers", cfg->dec_layers, 0, TFM_MAX_LAYERS, "layers"));
    if (!enc && !dec)
        return invalid("enc_layers", "enc_layers and dec_layers are both 0; a model needs an "
                                     "encoder, a decoder or both");
    TFM_TRY(check_count("d_model", cfg->d_model, 1, TFM_MAX_DIM, "dimensions"));
    TFM_TRY(check_count("heads", cfg->heads, 1, TFM_MAX_HEADS, "heads"));
    TFM_TRY(check_count("d_k", cfg->d_k, 0, TFM_MAX_DIM, "dimensions"));
    TFM_TRY(check_count("d_v", cfg->d_v, 0, TFM_MAX_DIM, "dimensions"));
    if ((cfg->d_k == 0 || cfg->d_v == 0) && cfg->d_model % cfg->heads != 0)
        return invalid("heads",
                       "d_model %d is not divisible by %d heads, and %s is 0 (meaning d_model / "
                       "heads); choose heads that divide d_model, or set d_k and d_v",
                       cfg->d_model, cfg->heads, cfg->d_k == 0 ? "d_k" : "d_v");
    const int dk = tfm_config_dk(cfg), dv = tfm_config_dv(cfg);
    if ((int64_t)cfg->heads * dk > TFM_MAX_INNER)
        return invalid("d_k", "heads %d x d_k %d = %lld exceeds the sanity limit of %d",
                       cfg->heads, dk, (long long)cfg->heads * dk, TFM_MAX_INNER);
    if ((int64_t)cfg->heads * dv > TFM_MAX_INNER)
        return invalid("d_v", "heads %d x d_v %d = %lld exceeds the sanity limit of %d",
                       cfg->heads, dv, (long long)cfg->heads * dv, TFM_MAX_INNER);
    TFM_TRY(check_count("d_ff", cfg->d_ff, 1, TFM_MAX_FF, "dimensions"));

    /* Enums: (unsigned) also catches negative values. */
    TFM_TRY(check_enum("activation", (unsigned)cfg->activation, 2, "0 relu, 1 gelu"));
    TFM_TRY(check_enum("norm", (unsigned)cfg->norm, 2, "0 post, 1 pre"));
    TFM_TRY(check_enum("positions", (unsigned)cfg->positions, 4,
                       "0 sinusoidal, 1 learned, 2 rope, 3 none"));
    TFM_TRY(check_enum("share", (unsigned)cfg->share, 3, "0 none, 1 decoder, 2 all"));
    if (cfg->embed_scale != 0 && cfg->embed_scale != 1)
        return invalid("embed_scale", "must be 0 or 1, got %d", cfg->embed_scale);

    if (cfg->positions == TFM_POS_ROPE && dk % 2 != 0)
        return invalid("d_k", "positions \"rope\" rotates pairs of dimensions, so d_k must be "
                              "even, got %d%s", dk, cfg->d_k == 0 ? " (d_model / heads)" : "");
    TFM_TRY(check_count("max_positions", cfg->max_positions, 1, TFM_MAX_POSITIONS, "positions"));
    if (!(isfinite(cfg->rope_theta) && cfg->rope_theta > 0.0f))
        return invalid("rope_theta", "must be a finite number > 0, got %g",
                       (double)cfg->rope_theta);

    /* Vocabularies and tying. src_vocab means nothing without an encoder. */
    if (enc) TFM_TRY(check_count("src_vocab", cfg->src_vocab, 1, TFM_MAX_VOCAB, "tokens"));
    TFM_TRY(check_count("tgt_vocab", cfg->tgt_vocab, 1, TFM_MAX_VOCAB, "tokens"));
    if (enc && cfg->src_vocab != cfg->tgt_vocab) {
        if (cfg->share == TFM_SHARE_ALL && dec)
            return invalid("share", "\"all\" ties the source and target embeddings, so "
                                    "src_vocab (%d) must equal tgt_vocab (%d); use \"decoder\" "
                                    "or \"none\" for separate vocabularies",
                           cfg->src_vocab, cfg->tgt_vocab);
        if (cfg->share != TFM_SHARE_NONE && !dec)
            return invalid("share", "\"%s\" in an encoder-only model ties the source embedding "
                                    "and the output projection, so src_vocab (%d) must equal "
                                    "tgt_vocab (%d); use \"none\" for separate vocabularies",
                           share_names[cfg->share], cfg->src_vocab, cfg->tgt_vocab);
    }

    /* Regularisation and numerics. */
    TFM_TRY(check_prob("dropout", cfg->dropout));
    TFM_TRY(check_prob("attn_dropout", cfg->attn_dropout));
    TFM_TRY(check_prob("embed_dropout", cfg->embed_dropout));
    TFM_TRY(check_prob("act_dropout", cfg->act_dropout));
    if (!(isfinite(cfg->ln_eps) && cfg->ln_eps > 0.0f))
        return invalid("ln_eps", "must be a finite number > 0, got %g", (double)cfg->ln_eps);
    TFM_TRY(check_prob("label_smoothing", cfg->label_smoothing));

    /* Special tokens: pad appears on both sides, bos/eos on the target side. */
    TFM_TRY(check_id("pad_id", cfg->pad_id, cfg->tgt_vocab, "tgt_vocab"));
    if (enc) TFM_TRY(check_id("pad_id", cfg->pad_id, cfg->src_vocab, "src_vocab"));
    TFM_TRY(check_id("bos_id", cfg->bos_id, cfg->tgt_vocab, "tgt_vocab"));
    TFM_TRY(check_id("eos_id", cfg->eos_id, cfg->tgt_vocab, "tgt_vocab"));
    return TFM_OK;
}

/* ------------------------------------------------------------------- JSON */

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsObject(v)) return "object";
    return "unknown value";
}

/* The TFM_ERR_FORMAT message for a parse error at `at` (may be NULL). cJSON's
 * error position is approximate (at or just after the offending character),
 * so the message gives the line and column and shows the text around them. */
static tfm_status malformed(const char *json, const char *at, const char *origin) {
    size_t len = strlen(json);
    if (strspn(json, " \t\r\n") == len)
        return tfm_error(TFM_ERR_FORMAT, "%s: malformed JSON: the input is empty", origin);
    if (at == NULL || at < json || at > json + len)
        return tfm_error(TFM_ERR_FORMAT, "%s: malformed JSON", origin);
    int line = 1, col = 1;
    const char *line_start = json;
    for (const char *p = json; p < at; p++) {
        if (*p == '\n') {
            line++;
            col = 1;
            line_start = p + 1;
        } else {
            col++;
        }
    }
    /* Up to 20 characters either side of the position, on its line. */
    const char *from = at - line_start > 20 ? at - 20 : line_start;
    char context[200];
    size_t o = 0;
    for (const char *p = from; *p && *p != '\n' && p < at + 20 && o + 5 < sizeof context; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c < 0x7f) context[o++] = (char)c;
        else o += (size_t)snprintf(context + o, sizeof context - o, "\\x%02x", c);
    }
    context[o] = '\0';
    return tfm_error(TFM_ERR_FORMAT, "%s: malformed JSON near line %d, column %d%s: %s", origin,
                     line, col, *at == '\0' ? " (end of input)" : "", context);
}

/* Stores one JSON value into tmp; errors name the key. */
static tfm_status set_from_json(tfm_config *tmp, const field *f, const cJSON *v,
                                const char *origin) {
    const char *key = f->name;
    switch (f->kind) {
    case KIND_INT: {
        if (!cJSON_IsNumber(v))
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": expected an integer, got %s",
                             origin, key, json_type_name(v));
        double d = v->valuedouble;
        /* JSON has one number type: 64 and 64.0 parse alike, and both are accepted. */
        if (isfinite(d) && d != floor(d))
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": expected an integer, got %g",
                             origin, key, d);
        if (!isfinite(d) || d < (double)INT_MIN || d > (double)INT_MAX)
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": %.17g is out of range for an int",
                             origin, key, d);
        put_int(tmp, f, (int)d);
        return TFM_OK;
    }
    case KIND_FLOAT: {
        if (!cJSON_IsNumber(v))
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": expected a number, got %s",
                             origin, key, json_type_name(v));
        double d = v->valuedouble;
        /* IEEE conversion: a value beyond the float range becomes Inf. */
        float x = (float)d;
        if (!isfinite(x))
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": %g is out of range for a float",
                             origin, key, d);
        put_float(tmp, f, x);
        return TFM_OK;
    }
    case KIND_BOOL: {
        if (cJSON_IsBool(v)) {
            put_int(tmp, f, cJSON_IsTrue(v) ? 1 : 0);
            return TFM_OK;
        }
        if (cJSON_IsNumber(v) && (v->valuedouble == 0.0 || v->valuedouble == 1.0)) {
            put_int(tmp, f, v->valuedouble == 1.0);
            return TFM_OK;
        }
        if (cJSON_IsNumber(v))
            return tfm_error(TFM_ERR_INVALID,
                             "%s: key \"%s\": expected true or false (or 1 or 0), got %g", origin,
                             key, v->valuedouble);
        return tfm_error(TFM_ERR_INVALID,
                         "%s: key \"%s\": expected true or false (or 1 or 0), got %s", origin, key,
                         json_type_name(v));
    }
    case KIND_ENUM: {
        char list[128], shown[80];
        enum_list(list, sizeof list, f);
        if (!cJSON_IsString(v))
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": expected a string (%s), got %s",
                             origin, key, list, json_type_name(v));
        int e = enum_lookup(f, v->valuestring);
        if (e < 0)
            return tfm_error(TFM_ERR_INVALID, "%s: key \"%s\": \"%s\" is not one of %s", origin,
                             key, printable(shown, sizeof shown, v->valuestring), list);
        put_int(tmp, f, e);
        return TFM_OK;
    }
    }
    TFM_ASSERT(!"unreachable: field kind");
    return TFM_ERR_INVALID;
}

tfm_status tfm_config_from_json(tfm_config *cfg, const char *json, const char *origin) {
    TFM_ASSERT(cfg != NULL && json != NULL);
    if (origin == NULL) origin = "<string>";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (root == NULL) return malformed(json, end ? end : cJSON_GetErrorPtr(), origin);
    if (!cJSON_IsObject(root)) {
        tfm_status s = tfm_error(TFM_ERR_FORMAT, "%s: expected a JSON object {...}, got %s",
                                 origin, json_type_name(root));
        cJSON_Delete(root);
        return s;
    }
    /* Parse into a copy, so that *cfg is untouched on any error. */
    tfm_config tmp = *cfg;
    unsigned char seen[N_FIELDS] = {0};
    tfm_status s = TFM_OK;
    for (const cJSON *item = root->child; item != NULL && s == TFM_OK; item = item->next) {
        char shown[80], hint[96];
        const char *key = item->string ? item->string : "";
        const field *f = find_field(key);
        if (f == NULL) {
            suggestion(hint, sizeof hint, key, 0);
            s = tfm_error(TFM_ERR_INVALID, "%s: unknown key \"%s\"%s", origin,
                          printable(shown, sizeof shown, key), hint);
            break;
        }
        if (seen[f - fields]++) {
            s = tfm_error(TFM_ERR_INVALID, "%s: key \"%s\" appears more than once", origin, key);
            break;
        }
        s = set_from_json(&tmp, f, item, origin);
    }
    cJSON_Delete(root);
    if (s == TFM_OK) *cfg = tmp;
    return s;
}

/* The shortest decimal that reads back as exactly x (at most 9 digits, which
 * always suffices for a float), so 0.1f prints as 0.1, not 0.100000001.
 * Whole numbers print without an exponent (10000, not 1e+04). */
static void format_float(char *out, size_t cap, float x) {
    if (!isfinite(x)) {
        snprintf(out, cap, "null"); /* JSON has no NaN or Inf; validation rejects them */
        return;
    }
    if (x == truncf(x) && fabsf(x) < 1e9f) {
        snprintf(out, cap, "%.0f", (double)x);
        return;
    }
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, cap, "%.*g", digits, (double)x);
        if (strtof(out, NULL) == x) return;
    }
}

char *tfm_config_to_json(const tfm_config *cfg) {
    TFM_ASSERT(cfg != NULL);
    char buf[4096], value[64];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sizeof buf - o, "{\n");
    for (int i = 0; i < N_FIELDS; i++) {
        const field *f = &fields[i];
        switch (f->kind) {
        case KIND_INT: snprintf(value, sizeof value, "%d", get_int(cfg, f)); break;
        case KIND_FLOAT: format_float(value, sizeof value, get_float(cfg, f)); break;
        case KIND_BOOL: {
            int b = get_int(cfg, f);
            /* An out-of-range value is kept as a number so that it is not lost. */
            if (b == 0 || b == 1) snprintf(value, sizeof value, "%s", b ? "true" : "false");
            else snprintf(value, sizeof value, "%d", b);
            break;
        }
        case KIND_ENUM: {
            int e = get_int(cfg, f);
            if (e >= 0 && e < f->n_names) snprintf(value, sizeof value, "\"%s\"", f->names[e]);
            else snprintf(value, sizeof value, "%d", e);
            break;
        }
        }
        o += (size_t)snprintf(buf + o, sizeof buf - o, "  \"%s\": %s%s\n", f->name, value,
                              i + 1 < N_FIELDS ? "," : "");
        TFM_ASSERT(o < sizeof buf);
    }
    o += (size_t)snprintf(buf + o, sizeof buf - o, "}");
    TFM_ASSERT(o < sizeof buf);
    char *json = malloc(o + 1);
    if (json != NULL) memcpy(json, buf, o + 1);
    return json;
}

/* ------------------------------------------------------------------ files */

tfm_status tfm_config_load(tfm_config *cfg, const char *path) {
    TFM_ASSERT(cfg != NULL && path != NULL);
    FILE *f = fopen(path, "rb");
    if (f == NULL) return tfm_error(TFM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        fclose(f);
        return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > TFM_MAX_JSON_BYTES) break;
            char *grown = realloc(buf, cap * 2);
            if (grown == NULL) {
                free(buf);
                fclose(f);
                return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = grown;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - 1 - len, f);
        len += n;
        if (n == 0) break;
    }
    int read_errno = errno;
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return tfm_error(TFM_ERR_IO, "%s: read failed: %s", path, strerror(read_errno));
    }
    if (len > TFM_MAX_JSON_BYTES) {
        free(buf);
        return tfm_error(TFM_ERR_FORMAT, "%s: larger than %d bytes; is this a configuration file?",
                         path, TFM_MAX_JSON_BYTES);
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len) != NULL) {
        free(buf);
        return tfm_error(TFM_ERR_FORMAT, "%s: contains a NUL byte; is this a JSON configuration "
                                         "file?", path);
    }
    /* Tolerate a UTF-8 byte order mark, which some editors write. */
    const char *text = len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0 ? buf + 3 : buf;
    tfm_status s = tfm_config_from_json(cfg, text, path);
    free(buf);
    return s;
}

tfm_status tfm_config_save(const tfm_config *cfg, const char *path) {
    TFM_ASSERT(cfg != NULL && path != NULL);
    char *json = tfm_config_to_json(cfg);
    if (json == NULL) return tfm_error(TFM_ERR_NOMEM, "%s: out of memory", path);
    tfm_atomic_file af;
    tfm_status s = tfm_atomic_open(&af, path);
    if (s == TFM_OK) {
        fputs(json, af.f);
        fputc('\n', af.f);
        s = tfm_atomic_commit(&af);
    }
    free(json);
    return s;
}

/* --------------------------------------------------------- command line */

/* Strict integer: optional sign and decimal digits, the whole string, in int range. */
static tfm_status parse_int(const char *flag, const char *value, int *out) {
    char shown[80];
    if (value[0] == '\0' || isspace((unsigned char)value[0]))
        return tfm_error(TFM_ERR_INVALID, "--%s: \"%s\" is not an integer", flag,
                         printable(shown, sizeof shown, value));
    errno = 0;
    char *end = NULL;
    long v = strtol(value, &end, 10);
    if (*end != '\0')
        return tfm_error(TFM_ERR_INVALID, "--%s: \"%s\" is not an integer", flag,
                         printable(shown, sizeof shown, value));
    if (errno == ERANGE || v < INT_MIN || v > INT_MAX)
        return tfm_error(TFM_ERR_INVALID, "--%s: %s is out of range for an int", flag,
                         printable(shown, sizeof shown, value));
    *out = (int)v;
    return TFM_OK;
}

/* Strict float: what strtod reads, the whole string, finite and within float range. */
static tfm_status parse_float(const char *flag, const char *value, float *out) {
    char shown[80];
    if (value[0] == '\0' || isspace((unsigned char)value[0]))
        return tfm_error(TFM_ERR_INVALID, "--%s: \"%s\" is not a number", flag,
                         printable(shown, sizeof shown, value));
    errno = 0;
    char *end = NULL;
    double d = strtod(value, &end);
    if (*end != '\0')
        return tfm_error(TFM_ERR_INVALID, "--%s: \"%s\" is not a number", flag,
                         printable(shown, sizeof shown, value));
    /* ERANGE on underflow returns a tiny value, which is fine; overflow is not.
     * IEEE conversion: a value beyond the float range becomes Inf. */
    float x = (float)d;
    if (!isfinite(x))
        return tfm_error(TFM_ERR_INVALID, "--%s: %s is not a finite float", flag,
                         printable(shown, sizeof shown, value));
    *out = x;
    return TFM_OK;
}

tfm_status tfm_config_set(tfm_config *cfg, const char *name, const char *value) {
    TFM_ASSERT(cfg != NULL && name != NULL);
    char shown[80], key[48];
    printable(shown, sizeof shown, name);
    size_t n = strlen(name);
    if (n >= sizeof key) return tfm_error(TFM_ERR_INVALID, "unknown model flag --%s", shown);
    for (size_t i = 0; i <= n; i++) key[i] = name[i] == '-' ? '_' : name[i];
    if (value == NULL) return tfm_error(TFM_ERR_INVALID, "--%s: missing value", shown);

    /* "vocab": one shared vocabulary, both sides. */
    if (strcmp(key, "vocab") == 0) {
        int v = 0;
        TFM_TRY(parse_int(shown, value, &v));
        cfg->src_vocab = v;
        cfg->tgt_vocab = v;
        return TFM_OK;
    }
    const field *f = find_field(key);
    if (f == NULL) {
        char hint[96];
        suggestion(hint, sizeof hint, key, 1);
        return tfm_error(TFM_ERR_INVALID, "unknown model flag --%s%s", shown, hint);
    }
    switch (f->kind) {
    case KIND_INT: {
        int v = 0;
        TFM_TRY(parse_int(shown, value, &v));
        put_int(cfg, f, v);
        return TFM_OK;
    }
    case KIND_FLOAT: {
        float v = 0.0f;
        TFM_TRY(parse_float(shown, value, &v));
        put_float(cfg, f, v);
        return TFM_OK;
    }
    case KIND_BOOL: {
        int b;
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0) b = 1;
        else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0) b = 0;
        else {
            char v[80];
            return tfm_error(TFM_ERR_INVALID, "--%s: \"%s\" is not true, false, 1 or 0", shown,
                             printable(v, sizeof v, value));
        }
        put_int(cfg, f, b);
        return TFM_OK;
    }
    case KIND_ENUM: {
        int e = enum_lookup(f, value);
        if (e < 0) {
            char v[80], list[128];
            enum_list(list, sizeof list, f);
            return tfm_error(TFM_ERR_INVALID, "--%s: \"%s\" is not one of %s", shown,
                             printable(v, sizeof v, value), list);
        }
        put_int(cfg, f, e);
        return TFM_OK;
    }
    }
    TFM_ASSERT(!"unreachable: field kind");
    return TFM_ERR_INVALID;
}
