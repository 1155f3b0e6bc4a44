/* test_safetensors.c: the safetensors writer and reader round-trip every dtype
 * bit-exactly; F64/F16/BF16 convert to float correctly; files written by hand
 * from the spec read back; and, when /usr/bin/python3 has numpy and torch, a
 * plain struct+json+numpy parser agrees with our files and ours with its. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_util.h"
#include "train/safetensors.h"

static char dir[64];

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int k = 0;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)len + 1);
    *n = fread(p, 1, (size_t)len, f);
    fclose(f);
    return p;
}

/* A file from a header string and data bytes, exactly as the spec lays it out. */
static void write_spec_file(const char *path, const char *header, const void *data, size_t n) {
    size_t h = strlen(header);
    unsigned char *buf = malloc(8 + h + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    if (n) memcpy(buf + 8 + h, data, n);
    write_bytes(path, buf, 8 + h + n);
    free(buf);
}

/* ---------------------------------------------------------- the round trip */

static const float f32v[6] = {1.0f, -2.5f, 3.25f, 1e-30f, -INFINITY, 6.0f};
static const double f64v[4] = {1.0 / 3.0, -1e300, 0.0, 2.718281828459045};
/* 1, -2, 0.5, 65504 (max), 2^-24 (smallest subnormal), -0, +inf, 1/3 rounded */
static const uint16_t f16v[8] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000, 0x7c00, 0x3555};
static const float f16_expect[8] = {1.0f, -2.0f, 0.5f, 65504.0f, 5.9604644775390625e-8f,
                                    -0.0f, INFINITY, 0.333251953125f};
/* 1, -3.5, 3.140625, 2^-126 (smallest normal) */
static const uint16_t bf16v[4] = {0x3f80, 0xc060, 0x4049, 0x0080};
static const float bf16_expect[4] = {1.0f, -3.5f, 3.140625f, 1.17549435e-38f};
static const int64_t i64v[3] = {-5, 2147483647, 7};
static const int32_t i32v[4] = {1, -2, 2147483647, -2147483647 - 1};
static const int16_t i16v[3] = {-32768, 0, 32767};
static const int8_t i8v[4] = {-128, -1, 0, 127};
static const uint8_t u8v[3] = {0, 200, 255};
static const uint8_t boolv[5] = {1, 0, 0, 1, 1};
static const float scalar = 42.0f;

static void test_round_trip(void) {
    const char *path = tmp_path("round.safetensors");
    tfm_st_writer *w;
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s8[1] = {8}, s3[1] = {3}, s22[2] = {2, 2},
            s5[1] = {5}, s03[2] = {0, 3};
    /* added in an order the writer must re-sort (size desc, then name) */
    CHECK(tfm_st_writer_add(w, "flag", TFM_DT_BOOL, 1, s5, boolv) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "half", TFM_DT_F16, 1, s8, f16v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "encoder.w", TFM_DT_F32, 2, s23, f32v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "bf", TFM_DT_BF16, 1, s4, bf16v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "dbl", TFM_DT_F64, 1, s4, f64v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "long", TFM_DT_I64, 1, s3, i64v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "int", TFM_DT_I32, 2, s22, i32v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "short", TFM_DT_I16, 1, s3, i16v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "byte", TFM_DT_I8, 1, s4, i8v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "ubyte", TFM_DT_U8, 1, s3, u8v) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "scalar", TFM_DT_F32, 0, NULL, &scalar) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "empty", TFM_DT_F32, 2, s03, NULL) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_writer_meta(w, "format", "pt") == TFM_OK, "meta");
    CHECK(tfm_st_writer_meta(w, "note", "quote \" backslash \\ newline \n tab \t caf\xc3\xa9") == TFM_OK,
          "meta");
    CHECK(tfm_st_writer_meta(w, "step", "1") == TFM_OK, "meta");
    CHECK(tfm_st_writer_meta(w, "step", "1000") == TFM_OK, "meta replace");
    /* writer-side errors */
    CHECK(tfm_st_writer_add(w, "int", TFM_DT_I32, 2, s22, i32v) == TFM_ERR_INVALID, "duplicate");
    CHECK(strstr(tfm_last_error(), "\"int\"") != NULL, "message: %s", tfm_last_error());
    CHECK(tfm_st_writer_add(w, "__metadata__", TFM_DT_I32, 2, s22, i32v) == TFM_ERR_INVALID,
          "reserved");
    int64_t neg[1] = {-1};
    CHECK(tfm_st_writer_add(w, "neg", TFM_DT_F32, 1, neg, f32v) == TFM_ERR_INVALID, "negative");
    CHECK(tfm_st_writer_add(w, "nine", TFM_DT_F32, 9, s23, f32v) == TFM_ERR_INVALID, "ndim");
    int64_t huge[3] = {1ll << 40, 1ll << 40, 1ll << 40};
    CHECK(tfm_st_writer_add(w, "huge", TFM_DT_F32, 3, huge, f32v) == TFM_ERR_INVALID, "overflow");
    CHECK(tfm_st_writer_add(w, "bad\xff", TFM_DT_F32, 1, s4, f32v) == TFM_ERR_INVALID, "utf8");
    CHECK(tfm_st_writer_save(w, path) == TFM_OK, "save: %s", tfm_last_error());
    tfm_st_writer_free(w);

    tfm_safetensors st;
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open: %s", tfm_last_error());
    if (!st.tensors) return;
    CHECK(st.n_tensors == 12, "n_tensors %d", st.n_tensors);
    CHECK((8 + st.header_size) % 8 == 0, "header not padded: %zu", st.header_size);
    CHECK(strcmp(tfm_st_meta(&st, "format"), "pt") == 0, "meta format");
    CHECK(strcmp(tfm_st_meta(&st, "step"), "1000") == 0, "meta step");
    CHECK(strcmp(tfm_st_meta(&st, "note"),
                 "quote \" backslash \\ newline \n tab \t caf\xc3\xa9") == 0,
          "meta escaping: %s", tfm_st_meta(&st, "note"));
    CHECK(tfm_st_meta(&st, "absent") == NULL, "absent meta");
    CHECK(tfm_st_find(&st, "absent") == NULL, "absent tensor");

    struct { const char *name; tfm_dtype dt; int ndim; int64_t d0, d1; const void *data; } want[] = {
        {"encoder.w", TFM_DT_F32, 2, 2, 3, f32v}, {"dbl", TFM_DT_F64, 1, 4, 0, f64v},
        {"half", TFM_DT_F16, 1, 8, 0, f16v},       {"bf", TFM_DT_BF16, 1, 4, 0, bf16v},
        {"long", TFM_DT_I64, 1, 3, 0, i64v},       {"int", TFM_DT_I32, 2, 2, 2, i32v},
        {"short", TFM_DT_I16, 1, 3, 0, i16v},      {"byte", TFM_DT_I8, 1, 4, 0, i8v},
        {"ubyte", TFM_DT_U8, 1, 3, 0, u8v},        {"flag", TFM_DT_BOOL, 1, 5, 0, boolv},
        {"scalar", TFM_DT_F32, 0, 0, 0, &scalar},  {"empty", TFM_DT_F32, 2, 0, 3, NULL},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const tfm_st_tensor *t = tfm_st_find(&st, want[i].name);
        CHECK(t != NULL, "missing %s", want[i].name);
        if (!t) continue;
        CHECK(t->dtype == want[i].dt, "%s dtype %s", want[i].name, tfm_dtype_name(t->dtype));
        CHECK(t->ndim == want[i].ndim, "%s ndim %d", want[i].name, t->ndim);
        if (want[i].ndim >= 1) CHECK(t->shape[0] == want[i].d0, "%s shape[0]", want[i].name);
        if (want[i].ndim >= 2) CHECK(t->shape[1] == want[i].d1, "%s shape[1]", want[i].name);
        size_t bytes = t->numel * tfm_dtype_size(t->dtype);
        CHECK(t->end - t->begin == bytes, "%s offsets", want[i].name);
        const void *p = tfm_st_data(&st, t);
        CHECK(((uintptr_t)p % tfm_dtype_size(t->dtype)) == 0, "%s unaligned", want[i].name);
        if (bytes) CHECK(memcmp(p, want[i].data, bytes) == 0, "%s not bit-exact", want[i].name);
    }
    const tfm_st_tensor *sc = tfm_st_find(&st, "scalar");
    CHECK(sc && sc->numel == 1, "scalar numel");
    const tfm_st_tensor *em = tfm_st_find(&st, "empty");
    CHECK(em && em->numel == 0, "empty numel");
    /* the writer's order: 8-byte dtypes first, then 4, 2, 1; by name within */
    const tfm_st_tensor *dbl = tfm_st_find(&st, "dbl"), *lng = tfm_st_find(&st, "long"),
                        *enc = tfm_st_find(&st, "encoder.w"), *ub = tfm_st_find(&st, "ubyte");
    CHECK(dbl && lng && enc && ub && dbl->begin == 0 && lng->begin == 32 &&
              enc->begin > lng->begin && ub->end == st.data_size,
          "writer order");

    /* conversions */
    float f[8];
    double d[8];
    int32_t iv[8];
    CHECK(tfm_st_read_f32(&st, "half", f, 8) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 8; i++)
        CHECK(memcmp(&f[i], &f16_expect[i], 4) == 0, "f16[%d] %.9g want %.9g", i, f[i],
              f16_expect[i]);
    CHECK(tfm_st_read_f32(&st, "bf", f, 4) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 4; i++) CHECK(f[i] == bf16_expect[i], "bf16[%d] %.9g", i, f[i]);
    CHECK(tfm_st_read_f32(&st, "dbl", f, 4) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 4; i++) CHECK(f[i] == (float)f64v[i], "f64->f32[%d] %.9g", i, f[i]);
    CHECK(tfm_st_read_f64(&st, "dbl", d, 4) == TFM_OK, "%s", tfm_last_error());
    CHECK(memcmp(d, f64v, sizeof f64v) == 0, "f64 exact");
    CHECK(tfm_st_read_f64(&st, "encoder.w", d, 6) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 6; i++) CHECK(d[i] == (double)f32v[i], "f32->f64[%d]", i);
    CHECK(tfm_st_read_f64(&st, "half", d, 8) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 8; i++) CHECK(d[i] == (double)f16_expect[i], "f16->f64[%d]", i);
    CHECK(tfm_st_read_f32(&st, "encoder.w", f, 6) == TFM_OK, "%s", tfm_last_error());
    CHECK(memcmp(f, f32v, sizeof f32v) == 0, "f32 exact");
    CHECK(tfm_st_read_f32(&st, "scalar", f, 1) == TFM_OK && f[0] == 42.0f, "scalar");
    CHECK(tfm_st_read_f32(&st, "empty", f, 0) == TFM_OK, "empty: %s", tfm_last_error());

    CHECK(tfm_st_read_i32(&st, "long", iv, 3) == TFM_OK, "%s", tfm_last_error());
    CHECK(iv[0] == -5 && iv[1] == 2147483647 && iv[2] == 7, "i64->i32");
    CHECK(tfm_st_read_i32(&st, "int", iv, 4) == TFM_OK && memcmp(iv, i32v, 16) == 0, "i32");
    CHECK(tfm_st_read_i32(&st, "short", iv, 3) == TFM_OK && iv[0] == -32768 && iv[2] == 32767,
          "i16");
    CHECK(tfm_st_read_i32(&st, "byte", iv, 4) == TFM_OK && iv[0] == -128 && iv[1] == -1 &&
              iv[3] == 127,
          "i8");
    CHECK(tfm_st_read_i32(&st, "ubyte", iv, 3) == TFM_OK && iv[1] == 200 && iv[2] == 255, "u8");
    CHECK(tfm_st_read_i32(&st, "flag", iv, 5) == TFM_OK && iv[0] == 1 && iv[1] == 0, "bool");

    /* reader errors name the file and the tensor */
    CHECK(tfm_st_read_f32(&st, "nope", f, 1) == TFM_ERR_FORMAT, "absent");
    CHECK(strstr(tfm_last_error(), "round.safetensors") && strstr(tfm_last_error(), "\"nope\""),
          "message: %s", tfm_last_error());
    CHECK(tfm_st_read_f32(&st, "encoder.w", f, 5) == TFM_ERR_FORMAT, "numel");
    CHECK(strstr(tfm_last_error(), "expects 5 elements, file has 6 with shape [2, 3]") &&
              strstr(tfm_last_error(), "\"encoder.w\""),
          "message: %s", tfm_last_error());
    CHECK(tfm_st_read_f32(&st, "int", f, 4) == TFM_ERR_FORMAT, "dtype");
    CHECK(strstr(tfm_last_error(), "\"int\" is I32"), "message: %s", tfm_last_error());
    CHECK(tfm_st_read_i32(&st, "encoder.w", iv, 6) == TFM_ERR_FORMAT, "dtype");
    tfm_st_close(&st);
    tfm_st_close(&st); /* idempotent */
}

/* An I64 value outside int32 is an error, not a silent wrap. */
static void test_i64_range(void) {
    const char *path = tmp_path("range.safetensors");
    int64_t v[2] = {1, 1ll << 33}, s2[1] = {2};
    tfm_st_writer *w;
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    CHECK(tfm_st_writer_add(w, "ids", TFM_DT_I64, 1, s2, v) == TFM_OK, "add");
    CHECK(tfm_st_writer_save(w, path) == TFM_OK, "save: %s", tfm_last_error());
    tfm_st_writer_free(w);
    tfm_safetensors st;
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open: %s", tfm_last_error());
    int32_t out[2];
    CHECK(tfm_st_read_i32(&st, "ids", out, 2) == TFM_ERR_FORMAT, "range");
    CHECK(strstr(tfm_last_error(), "element 1 is 8589934592"), "message: %s", tfm_last_error());
    tfm_st_close(&st);
}

/* The writer's bytes for a small file, spelled out from the spec. */
static void test_exact_bytes(void) {
    const char *path = tmp_path("exact.safetensors");
    float v[2] = {1.0f, 2.0f};
    int64_t s2[1] = {2};
    tfm_st_writer *w;
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    CHECK(tfm_st_writer_add(w, "w", TFM_DT_F32, 1, s2, v) == TFM_OK, "add");
    CHECK(tfm_st_writer_meta(w, "format", "pt") == TFM_OK, "meta");
    CHECK(tfm_st_writer_save(w, path) == TFM_OK, "save: %s", tfm_last_error());
    tfm_st_writer_free(w);
    const char *json =
        "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2],"
        "\"data_offsets\":[0,8]}}";
    size_t h = strlen(json), padded = (h + 7) / 8 * 8;
    unsigned char want[256];
    memset(want, 0, sizeof want);
    want[0] = (unsigned char)padded;
    memcpy(want + 8, json, h);
    memset(want + 8 + h, ' ', padded - h);
    memcpy(want + 8 + padded, v, 8);
    size_t n = 0;
    unsigned char *got = read_bytes(path, &n);
    CHECK(got && n == 16 + padded && memcmp(got, want, n) == 0, "bytes differ (n=%zu)", n);
    free(got);
}

/* Files laid out by hand following the spec: metadata after the tensors, an
 * unpadded (unaligned) header, JSON whitespace, a header padded with spaces. */
static void test_spec_files(void) {
    const char *path = tmp_path("spec.safetensors");
    /* layout: "c" F32 [1, 2] at [0,8), "b" I16 [] at [8,10), "a" BF16 [2] at [10,14) */
    unsigned char data[14];
    int16_t b[1] = {-3};
    uint32_t c[2] = {0x3f800000u, 0x40490fdbu}; /* 1.0, pi */
    uint16_t abf[2] = {0x3f00, 0xc0e0};         /* 0.5, -7.0 */
    memcpy(data, c, 8);
    memcpy(data + 8, b, 2);
    memcpy(data + 10, abf, 4);
    const char *hdr =
        "{\n  \"a\": {\"data_offsets\": [10, 14], \"dtype\": \"BF16\", \"shape\": [2]},\n"
        "  \"b\": {\"dtype\": \"I16\", \"shape\": [], \"data_offsets\": [8, 10]},\n"
        "  \"c\": {\"dtype\": \"F32\", \"shape\": [1, 2], \"data_offsets\": [0, 8]},\n"
        "  \"__metadata__\": {\"format\": \"pt\", \"caf\\u00e9\": \"\\u2603\"}\n }";
    CHECK(strlen(hdr) % 8 != 0, "the test wants an unaligned header (len %zu)", strlen(hdr));
    write_spec_file(path, hdr, data, sizeof data);
    tfm_safetensors st;
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open: %s", tfm_last_error());
    if (st.tensors) {
        float f[2];
        int32_t i1;
        CHECK(tfm_st_read_f32(&st, "a", f, 2) == TFM_OK && f[0] == 0.5f && f[1] == -7.0f, "a");
        CHECK(tfm_st_read_i32(&st, "b", &i1, 1) == TFM_OK && i1 == -3, "b");
        CHECK(tfm_st_read_f32(&st, "c", f, 2) == TFM_OK && f[0] == 1.0f &&
                  fabsf(f[1] - 3.14159265f) < 1e-7f,
              "c");
        const tfm_st_tensor *t = tfm_st_find(&st, "c");
        CHECK(t && ((uintptr_t)tfm_st_data(&st, t)) % 4 == 0, "unaligned header: data not aligned");
        CHECK(tfm_st_meta(&st, "caf\xc3\xa9") && strcmp(tfm_st_meta(&st, "caf\xc3\xa9"),
                                                        "\xe2\x98\x83") == 0,
              "unicode metadata");
        CHECK(st.n_tensors == 3 && strcmp(st.tensors[0].name, "a") == 0, "header order");
    }
    tfm_st_close(&st);

    /* padded with spaces, no metadata, only an empty tensor: a 0-byte buffer */
    const char *hdr2 = "{\"e\":{\"dtype\":\"F64\",\"shape\":[3,0],\"data_offsets\":[0,0]}}      ";
    write_spec_file(path, hdr2, NULL, 0);
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open padded: %s", tfm_last_error());
    CHECK(st.n_tensors == 1 && st.data_size == 0 && st.n_meta == 0, "padded file");
    tfm_st_close(&st);

    /* the empty header "{}" is a valid file with no tensors */
    write_spec_file(path, "{}", NULL, 0);
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open empty: %s", tfm_last_error());
    CHECK(st.n_tensors == 0 && tfm_st_find(&st, "x") == NULL, "empty file");
    tfm_st_close(&st);
}

/* ------------------------------------------------------------ python check */

static const char *py_check_ours =
    "import sys, struct, json\n"
    "import numpy as np\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "n = struct.unpack('<Q', raw[:8])[0]\n"
    "assert (8 + n) % 8 == 0, 'header not padded'\n"
    "hdr = json.loads(raw[8:8 + n].decode('utf-8'))\n"
    "buf = raw[8 + n:]\n"
    "meta = hdr.pop('__metadata__')\n"
    "assert meta == {'format': 'pt', 'origin': 'transformer.c'}, meta\n"
    "dt = {'F32': '<f4', 'F64': '<f8', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'U8': 'u1'}\n"
    "def get(name):\n"
    "    e = hdr[name]; b, en = e['data_offsets']\n"
    "    a = np.frombuffer(buf[b:en], dtype=dt[e['dtype']])\n"
    "    return a.reshape(e['shape'])\n"
    "ends = sorted((e['data_offsets'] for e in hdr.values()))\n"
    "assert ends[0][0] == 0 and ends[-1][1] == len(buf), ends\n"
    "assert all(p[1] == q[0] for p, q in zip(ends, ends[1:])), ends\n"
    "x = get('x'); assert x.shape == (3, 4), x.shape\n"
    "assert np.array_equal(x, (np.arange(12, dtype=np.float32) * np.float32(0.1) - np.float32(0.5)).reshape(3, 4)), x\n"
    "assert np.array_equal(get('d'), np.array([1/3, -2.5e-300], dtype='<f8')), get('d')\n"
    "assert np.array_equal(get('h'), np.array([1, -2, 0.5, 65504], dtype='<f2')), get('h')\n"
    "assert np.array_equal(get('ids'), np.array([[0, -1], [2**40, 3]], dtype='<i8'))\n"
    "assert np.array_equal(get('i'), np.array([7, -7], dtype='<i4'))\n"
    "assert np.array_equal(get('u'), np.array([255], dtype='u1'))\n"
    "print('python: ours OK')\n";

/* Writes a file the way torch would lay it out, with plain struct + json. */
static const char *py_write_theirs =
    "import sys, struct, json\n"
    "import torch\n"
    "g = torch.Generator().manual_seed(0)\n"
    "base = torch.randn(5, 7, generator=g, dtype=torch.float64)\n"
    "ts = {'w32': base.to(torch.float32), 'w64': base, 'w16': base.to(torch.float16),\n"
    "      'wbf': base.to(torch.bfloat16), 'ids': torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),\n"
    "      'w16_as64': base.to(torch.float16).to(torch.float64),\n"
    "      'wbf_as64': base.to(torch.bfloat16).to(torch.float64)}\n"
    "names = {torch.float32: 'F32', torch.float64: 'F64', torch.float16: 'F16',\n"
    "         torch.bfloat16: 'BF16', torch.int64: 'I64'}\n"
    "hdr, blobs, off = {'__metadata__': {'format': 'pt'}}, [], 0\n"
    "for k, t in ts.items():\n"
    "    t = t.contiguous()\n"
    "    b = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()\n"
    "    hdr[k] = {'dtype': names[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}\n"
    "    blobs.append(b); off += len(b)\n"
    "h = json.dumps(hdr).encode('utf-8')\n"
    "h += b' ' * ((8 - len(h) % 8) % 8)\n"
    "with open(sys.argv[1], 'wb') as f:\n"
    "    f.write(struct.pack('<Q', len(h))); f.write(h)\n"
    "    for b in blobs: f.write(b)\n"
    "print('python: wrote theirs')\n";

static void test_python(void) {
    const char *py = tfm_test_env("TFM_REF_PYTHON", "/usr/bin/python3");
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import numpy, torch' 2>&1", py);
    if (access(py, X_OK) != 0 || tfm_test_run(cmd, out, sizeof out) != 0) {
        printf("skipping the python cross-check: %s cannot import numpy and torch\n", py);
        return;
    }

    /* ours -> python */
    const char *ours = tmp_path("ours.safetensors"), *script = tmp_path("check.py");
    float x[12];
    for (int i = 0; i < 12; i++) x[i] = (float)i * 0.1f - 0.5f;
    double dd[2] = {1.0 / 3.0, -2.5e-300};
    uint16_t hh[4] = {0x3c00, 0xc000, 0x3800, 0x7bff};
    int64_t ids[4] = {0, -1, 1ll << 40, 3};
    int32_t ii[2] = {7, -7};
    uint8_t uu[1] = {255};
    int64_t s34[2] = {3, 4}, s2[1] = {2}, s4[1] = {4}, s22[2] = {2, 2}, s1[1] = {1};
    tfm_st_writer *w;
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    CHECK(tfm_st_writer_add(w, "x", TFM_DT_F32, 2, s34, x) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "d", TFM_DT_F64, 1, s2, dd) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "h", TFM_DT_F16, 1, s4, hh) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "ids", TFM_DT_I64, 2, s22, ids) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "i", TFM_DT_I32, 1, s2, ii) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "u", TFM_DT_U8, 1, s1, uu) == TFM_OK, "add");
    CHECK(tfm_st_writer_meta(w, "format", "pt") == TFM_OK, "meta");
    CHECK(tfm_st_writer_meta(w, "origin", "transformer.c") == TFM_OK, "meta");
    CHECK(tfm_st_writer_save(w, ours) == TFM_OK, "save: %s", tfm_last_error());
    tfm_st_writer_free(w);
    write_bytes(script, py_check_ours, strlen(py_check_ours));
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' 2>&1", py, script, ours);
    int rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "python rejected our file (rc %d):\n%s", rc, out);
    if (rc == 0) printf("%s", out);

    /* python (torch) -> ours */
    const char *theirs = tmp_path("theirs.safetensors"), *wscript = tmp_path("write.py");
    write_bytes(wscript, py_write_theirs, strlen(py_write_theirs));
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' 2>&1", py, wscript, theirs);
    rc = tfm_test_run(cmd, out, sizeof out);
    CHECK(rc == 0, "python writer failed (rc %d):\n%s", rc, out);
    if (rc != 0) return;
    tfm_safetensors st;
    CHECK(tfm_st_open(&st, theirs) == TFM_OK, "open theirs: %s", tfm_last_error());
    if (!st.tensors) return;
    CHECK(strcmp(tfm_st_meta(&st, "format"), "pt") == 0, "meta");
    double w64[35], ref[35];
    float w32[35], f[35], fref[35];
    CHECK(tfm_st_read_f64(&st, "w64", w64, 35) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_read_f32(&st, "w32", w32, 35) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 35; i++) fref[i] = (float)w64[i];
    CHECK(memcmp(w32, fref, sizeof w32) == 0, "torch's F32 rounding differs from (float)F64");
    CHECK(tfm_st_read_f32(&st, "w64", f, 35) == TFM_OK && memcmp(f, fref, sizeof f) == 0,
          "F64 -> f32");
    /* F16 and BF16 decode exactly to torch's own widening to float64 */
    CHECK(tfm_st_read_f64(&st, "w16_as64", ref, 35) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_read_f64(&st, "w16", w64, 35) == TFM_OK, "%s", tfm_last_error());
    CHECK(memcmp(w64, ref, sizeof ref) == 0, "F16 decode differs from torch");
    CHECK(tfm_st_read_f32(&st, "w16", f, 35) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 35; i++) fref[i] = (float)ref[i];
    CHECK(memcmp(f, fref, sizeof f) == 0, "F16 -> f32 differs from torch");
    CHECK(tfm_st_read_f64(&st, "wbf_as64", ref, 35) == TFM_OK, "%s", tfm_last_error());
    CHECK(tfm_st_read_f64(&st, "wbf", w64, 35) == TFM_OK, "%s", tfm_last_error());
    CHECK(memcmp(w64, ref, sizeof ref) == 0, "BF16 decode differs from torch");
    CHECK(tfm_st_read_f32(&st, "wbf", f, 35) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 35; i++) fref[i] = (float)ref[i];
    CHECK(memcmp(f, fref, sizeof f) == 0, "BF16 -> f32 differs from torch");
    int32_t idv[12];
    CHECK(tfm_st_read_i32(&st, "ids", idv, 12) == TFM_OK, "%s", tfm_last_error());
    for (int i = 0; i < 12; i++) CHECK(idv[i] == i - 3, "ids[%d] = %d", i, idv[i]);
    printf("python: theirs OK\n");
    tfm_st_close(&st);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tfm_st_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_i64_range();
    test_exact_bytes();
    test_spec_files();
    test_python();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tfm_test_run(cmd, NULL, 0);
    return tfm_test_finish();
}
