/* test_bad_safetensors.c: malformed safetensors files give TFM_ERR_FORMAT with a
 * message naming the file (and the tensor or field), never a crash: every
 * prefix of a valid file, corrupted header bytes, and each invalid case the
 * reader checks. Also the writer's atomic save: a failed save leaves no
 * temporary file and the existing destination untouched. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
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

/* u64 header size + header + `data_len` zero bytes. */
static void write_spec_file(const char *path, const char *header, size_t data_len) {
    size_t h = strlen(header);
    unsigned char *buf = calloc(1, 8 + h + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    write_bytes(path, buf, 8 + h + data_len);
    free(buf);
}

/* Reads every tensor through every accessor: must not crash on an accepted file. */
static void touch_all(const tfm_safetensors *st) {
    for (int i = 0; i < st->n_tensors; i++) {
        const tfm_st_tensor *t = &st->tensors[i];
        CHECK(tfm_st_find(st, t->name) != NULL, "find %s", t->name);
        size_t n = t->numel ? t->numel : 1;
        float *f = malloc(n * sizeof(float));
        double *d = malloc(n * sizeof(double));
        int32_t *iv = malloc(n * sizeof(int32_t));
        (void)tfm_st_read_f32(st, t->name, f, t->numel);
        (void)tfm_st_read_f64(st, t->name, d, t->numel);
        (void)tfm_st_read_i32(st, t->name, iv, t->numel);
        volatile unsigned char sink = 0;
        const unsigned char *p = tfm_st_data(st, t);
        for (size_t b = 0; b < t->end - t->begin; b++) sink ^= p[b];
        (void)sink;
        free(f);
        free(d);
        free(iv);
    }
}

/* Expects tfm_st_open(path) to fail with `status` and a message that contains
 * the file's name and `needle`. */
static void expect_bad(const char *path, tfm_status status, const char *needle, const char *what) {
    tfm_safetensors st;
    tfm_status s = tfm_st_open(&st, path);
    const char *msg = tfm_last_error();
    CHECK(s == status, "%s: status %s, want %s (%s)", what, tfm_status_name(s),
          tfm_status_name(status), msg);
    CHECK(strstr(msg, path) != NULL, "%s: message does not name the file: %s", what, msg);
    CHECK(!needle || strstr(msg, needle) != NULL, "%s: message lacks '%s': %s", what, needle, msg);
    CHECK(st.tensors == NULL && st.n_tensors == 0 && st.path == NULL, "%s: st not left empty",
          what);
    if (s == TFM_OK) tfm_st_close(&st);
    if (s != TFM_OK && getenv("TFM_VERBOSE")) printf("  %-28s %s\n", what, msg);
}

static void expect_header(const char *header, size_t data_len, const char *needle,
                          const char *what) {
    const char *path = tmp_path("case.safetensors");
    write_spec_file(path, header, data_len);
    expect_bad(path, TFM_ERR_FORMAT, needle, what);
}

static unsigned char *make_valid(size_t *n) {
    const char *path = tmp_path("valid.safetensors");
    static const float a[6] = {1, 2, 3, 4, 5, 6};
    static const int64_t ids[3] = {1, 2, 3};
    static const uint16_t h[2] = {0x3c00, 0x4000};
    static const uint8_t u[3] = {1, 0, 1};
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s2[1] = {2};
    tfm_st_writer *w;
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    CHECK(tfm_st_writer_add(w, "enc.w", TFM_DT_F32, 2, s23, a) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "ids", TFM_DT_I64, 1, s3, ids) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "h", TFM_DT_F16, 1, s2, h) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "mask", TFM_DT_BOOL, 1, s3, u) == TFM_OK, "add");
    CHECK(tfm_st_writer_meta(w, "format", "pt") == TFM_OK, "meta");
    CHECK(tfm_st_writer_save(w, path) == TFM_OK, "save: %s", tfm_last_error());
    tfm_st_writer_free(w);
    return read_bytes(path, n);
}

static void test_prefixes(const unsigned char *valid, size_t n) {
    const char *path = tmp_path("prefix.safetensors");
    int bad = 0;
    for (size_t len = 0; len < n; len++) {
        write_bytes(path, valid, len);
        tfm_safetensors st;
        tfm_status s = tfm_st_open(&st, path);
        if (s != TFM_ERR_FORMAT || !strstr(tfm_last_error(), path)) {
            bad++;
            CHECK(0, "prefix of %zu/%zu bytes: status %s: %s", len, n, tfm_status_name(s),
                  tfm_last_error());
        }
        if (s == TFM_OK) tfm_st_close(&st);
    }
    CHECK(bad == 0, "%d of %zu prefixes accepted", bad, n);
    printf("every prefix of a %zu-byte file rejected\n", n);
    write_bytes(path, valid, n);
    tfm_safetensors st;
    CHECK(tfm_st_open(&st, path) == TFM_OK, "the full file: %s", tfm_last_error());
    tfm_st_close(&st);
    /* one extra byte at the end is a hole at the end of the buffer */
    unsigned char *more = malloc(n + 1);
    memcpy(more, valid, n);
    more[n] = 0;
    write_bytes(path, more, n + 1);
    expect_bad(path, TFM_ERR_FORMAT, "belong to no tensor", "trailing byte");
    free(more);
}

/* Every header byte replaced by each of a set of troublesome values; the size
 * field's bytes too. Accepted files must then read without crashing. */
static void test_corruption(const unsigned char *valid, size_t n) {
    const char *path = tmp_path("corrupt.safetensors");
    static const unsigned char subst[] = {'{', '}', '[', ']', '"', ',', ':', '0', '9', '-',
                                          '.', 'e', ' ', '\\', 0x00, 0x7f, 0x80, 0xc3, 0xff};
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | valid[i];
    unsigned char *buf = malloc(n);
    int accepted = 0, rejected = 0, wrong = 0;
    for (size_t pos = 0; pos < 8 + hlen; pos++) {
        for (size_t k = 0; k < sizeof subst; k++) {
            if (valid[pos] == subst[k]) continue;
            memcpy(buf, valid, n);
            buf[pos] = subst[k];
            write_bytes(path, buf, n);
            tfm_safetensors st;
            tfm_status s = tfm_st_open(&st, path);
            if (s == TFM_OK) {
                accepted++;
                touch_all(&st);
                tfm_st_close(&st);
            } else if (s == TFM_ERR_FORMAT && strstr(tfm_last_error(), path)) {
                rejected++;
            } else {
                wrong++;
                CHECK(0, "byte %zu -> 0x%02x: status %s: %s", pos, subst[k], tfm_status_name(s),
                      tfm_last_error());
            }
        }
    }
    /* the size field: each byte set high */
    for (int pos = 0; pos < 8; pos++) {
        memcpy(buf, valid, n);
        buf[pos] ^= 0x80;
        write_bytes(path, buf, n);
        expect_bad(path, TFM_ERR_FORMAT, NULL, "size field bit flip");
    }
    free(buf);
    CHECK(wrong == 0, "%d corruptions gave a wrong status", wrong);
    printf("header corruption: %d rejected, %d accepted (harmless, e.g. in a name), 0 crashes\n",
           rejected, accepted);
}

static void test_cases(void) {
    const char *path = tmp_path("short.safetensors");
    write_bytes(path, "abc", 3);
    expect_bad(path, TFM_ERR_FORMAT, "truncated", "shorter than 8 bytes");
    write_bytes(path, "", 0);
    expect_bad(path, TFM_ERR_FORMAT, "truncated", "empty file");
    unsigned char big[16] = {0x00, 0x10, 0, 0, 0, 0, 0, 0, '{', '}'};
    write_bytes(path, big, sizeof big);
    expect_bad(path, TFM_ERR_FORMAT, "header size is 4096 bytes but the file has only 8",
               "header larger than the file");
    unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    write_bytes(path, huge, sizeof huge);
    expect_bad(path, TFM_ERR_FORMAT, "truncated", "header size 2^64-1");
    expect_bad(tmp_path("does-not-exist.safetensors"), TFM_ERR_IO, "cannot open", "missing file");
    expect_bad(dir, TFM_ERR_IO, "not a regular file", "a directory");

    const char *T = "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
    char h[512];
    expect_header("", 0, "not a JSON object", "empty header");
    expect_header("{\"t\":", 0, "not valid JSON", "cut JSON");
    expect_header("[1,2]", 0, "not a JSON object", "array header");
    expect_header("{} x", 0, "trailing bytes", "trailing garbage");
    {
        unsigned char nul[11] = {3, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0};
        write_bytes(tmp_path("nul.safetensors"), nul, sizeof nul);
        expect_bad(tmp_path("nul.safetensors"), TFM_ERR_FORMAT, "trailing bytes", "NUL padding");
    }
    expect_header("{\"t\xff\":{}}", 0, "UTF-8", "invalid UTF-8");
    expect_header("{\"t\":[1]}", 0, "\"t\": entry is not a JSON object", "entry not an object");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing field \"data_offsets\"",
                  "missing data_offsets");
    expect_header("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "missing field \"dtype\"",
                  "missing dtype");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
                  "unknown field \"x\"", "unknown field");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  8, "given twice", "field twice");
    expect_header("{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                  "\"t\": unsupported dtype \"F8_E4M3\"", "unknown dtype");
    expect_header("{\"t\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  "dtype is not a string", "dtype not a string");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                  "\"t\": shape[0] is not a non-negative integer", "negative dim");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", 0,
                  "shape[0]", "fractional dim");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
                  "shape[0]", "string dim");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 8,
                  "shape[0]", "dim beyond 2^53");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
                  "shape is not an array", "shape not an array");
    expect_header("{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                  1, "9 dimensions", "too many dims");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                  "\"data_offsets\":[0,0]}}",
                  0, "overflow", "numel overflow");
    expect_header("{\"encoder.layers.0.norm1.weight\":{\"dtype\":\"F32\",\"shape\":[4],"
                  "\"data_offsets\":[0,12]}}",
                  12,
                  ": tensor \"encoder.layers.0.norm1.weight\": data_offsets [0, 12] do not match "
                  "F32 shape [4] (16 bytes)",
                  "offsets vs shape");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                  "end before they begin", "reversed offsets");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                  "outside the data buffer", "offsets beyond the buffer");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", 16,
                  "two non-negative integers", "three offsets");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
                  "two non-negative integers", "negative offset");
    expect_header("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"a\":0}}}", 8,
                  "two non-negative integers", "offsets object");
    snprintf(h, sizeof h, "{%s,\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", T);
    expect_header(h, 12, "overlaps", "overlapping tensors");
    snprintf(h, sizeof h, "{%s,\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", T);
    expect_header(h, 20, "[8, 12) belong to no tensor", "hole");
    snprintf(h, sizeof h, "{\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}");
    expect_header(h, 8, "[0, 4) belong to no tensor", "hole at the start");
    snprintf(h, sizeof h, "{%s}", T);
    expect_header(h, 12, "[8, 12) at the end", "unused bytes at the end");
    snprintf(h, sizeof h, "{%s,%s}", T, T);
    expect_header(h, 8, "\"t\" appears twice", "duplicate names");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"a\":1},%s}", T);
    expect_header(h, 8, "__metadata__ \"a\": value is not a string", "metadata not a string");
    snprintf(h, sizeof h, "{\"__metadata__\":[\"a\"],%s}", T);
    expect_header(h, 8, "\"__metadata__\" is not a JSON object", "metadata not an object");
    snprintf(h, sizeof h, "{\"__metadata__\":{},%s,\"__metadata__\":{}}", T);
    expect_header(h, 8, "\"__metadata__\" given twice", "metadata twice");
    snprintf(h, sizeof h, "{\"__metadata__\":{\"a\":\"x\",\"a\":\"y\"},%s}", T);
    expect_header(h, 8, "\"a\": key given twice", "metadata key twice");
    /* deep nesting must not blow the stack */
    char *deep = malloc(200010);
    strcpy(deep, "{\"t\":");
    for (int i = 0; i < 100000; i++) deep[5 + i] = '[';
    deep[100005] = '\0';
    expect_header(deep, 0, "not valid JSON", "deep nesting");
    free(deep);
}

static int count_tmp_files(const char *d) {
    DIR *dp = opendir(d);
    if (!dp) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)))
        if (strstr(e->d_name, ".tmp")) n++;
    closedir(dp);
    return n;
}

static void test_atomic_save(void) {
    static const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    int64_t s4[1] = {4};
    tfm_st_writer *w;
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    CHECK(tfm_st_writer_add(w, "x", TFM_DT_F32, 1, s4, a) == TFM_OK, "add");

    /* a directory that does not exist */
    const char *nodir = tmp_path("no/such/dir/model.safetensors");
    CHECK(tfm_st_writer_save(w, nodir) == TFM_ERR_IO, "save into a missing directory");
    CHECK(strstr(tfm_last_error(), nodir) != NULL, "message: %s", tfm_last_error());
    struct stat sb;
    CHECK(stat(tmp_path("no"), &sb) != 0, "the missing directory was created");
    CHECK(count_tmp_files(dir) == 0, "temporary file left behind");

    /* the destination is a directory: rename fails after the data is written */
    const char *asdir = tmp_path("isdir.safetensors");
    CHECK(mkdir(asdir, 0777) == 0, "mkdir");
    const char *inner = tmp_path("isdir.safetensors/keep");
    write_bytes(inner, "keep", 4);
    CHECK(tfm_st_writer_save(w, asdir) == TFM_ERR_IO, "save over a directory");
    CHECK(strstr(tfm_last_error(), asdir) != NULL, "message: %s", tfm_last_error());
    CHECK(count_tmp_files(dir) == 0, "temporary file left behind after a failed rename");
    CHECK(stat(inner, &sb) == 0 && sb.st_size == 4, "the existing directory was touched");

    /* saving over an existing file replaces it */
    const char *path = tmp_path("model.safetensors");
    CHECK(tfm_st_writer_save(w, path) == TFM_OK, "save: %s", tfm_last_error());
    tfm_st_writer_free(w);
    CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
    CHECK(tfm_st_writer_add(w, "x", TFM_DT_F32, 1, s4, b) == TFM_OK, "add");
    CHECK(tfm_st_writer_add(w, "y", TFM_DT_F32, 1, s4, a) == TFM_OK, "add");
    CHECK(tfm_st_writer_save(w, path) == TFM_OK, "save over: %s", tfm_last_error());
    tfm_st_writer_free(w);
    tfm_safetensors st;
    float got[4];
    CHECK(tfm_st_open(&st, path) == TFM_OK, "open: %s", tfm_last_error());
    CHECK(st.n_tensors == 2, "not replaced: %d tensors", st.n_tensors);
    CHECK(tfm_st_read_f32(&st, "x", got, 4) == TFM_OK && memcmp(got, b, sizeof b) == 0,
          "new contents");
    tfm_st_close(&st);
    CHECK(count_tmp_files(dir) == 0, "temporary file left behind after a save");

    /* a read-only directory (meaningless as root, who may write anyway) */
    if (geteuid() != 0) {
        const char *ro = tmp_path("ro");
        CHECK(mkdir(ro, 0777) == 0, "mkdir");
        const char *rop = tmp_path("ro/model.safetensors");
        write_bytes(rop, "old", 3);
        chmod(ro, 0555);
        CHECK(tfm_st_writer_init(&w) == TFM_OK, "init");
        CHECK(tfm_st_writer_add(w, "x", TFM_DT_F32, 1, s4, a) == TFM_OK, "add");
        CHECK(tfm_st_writer_save(w, rop) == TFM_ERR_IO, "save into a read-only directory");
        tfm_st_writer_free(w);
        size_t n = 0;
        unsigned char *old = read_bytes(rop, &n);
        CHECK(old && n == 3 && memcmp(old, "old", 3) == 0, "existing file changed");
        free(old);
        chmod(ro, 0777);
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tfm_bad_st_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    size_t n = 0;
    unsigned char *valid = make_valid(&n);
    CHECK(valid && n > 8, "could not build the valid file");
    if (valid && n > 8) {
        test_prefixes(valid, n);
        test_corruption(valid, n);
    }
    free(valid);
    test_cases();
    test_atomic_save();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    tfm_test_run(cmd, NULL, 0);
    return tfm_test_finish();
}
