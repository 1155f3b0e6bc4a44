/*
 * test_bpe.c: the BPE tokenizer (src/text/bpe*.c).
 *
 *   - golden ids, pieces and model file for a tiny model learned from a fixed
 *     text (a change in pre-tokenization, tie-breaking, merging or the file
 *     format shows up here);
 *   - exact round trips on tricky UTF-8, byte fallback for unseen characters
 *     and for a literal U+2581;
 *   - save/load gives the same model and the same encodings;
 *   - the build API: a merge that remakes an existing string reuses its id,
 *     a merge that would read as a reserved piece is refused;
 *   - encoding from several threads at once on one model;
 *   - Multi30k (when TFM_SHARED_DIR/data/multi30k exists): learn on train,
 *     round-trip the val set exactly.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/utf8.h"
#include "test_util.h"
#include "text/bpe.h"

static const char TINY[] = "the cat sat on the mat\n"
                           "the dog sat on the log\n"
                           "Der Hund saß auf der Matte.\n"
                           "Die Katze saß auf dem Baum.\n"
                           "the cat and the dog sat together\n";

/* The model tfm_bpe_learn_text(TINY) gives with vocab_size 400, after its
 * header line. TINY has no pair across a change of character class seen
 * twice ("e." and "m." once each), so v1 and v2 learn the same merges. */
#define TINY_MODEL_BODY                                                                   \
    "vocab_size 306\n"                                                                     \
    "chars 25\n"                                                                           \
    "U+2581 ▁\nU+0074 t\nU+0061 a\nU+0065 e\nU+0068 h\nU+0064 d\n"                        \
    "U+006F o\nU+0073 s\nU+0067 g\nU+006E n\nU+0075 u\nU+006D m\n"                        \
    "U+0072 r\nU+002E .\nU+0044 D\nU+0063 c\nU+0066 f\nU+00DF ß\n"                        \
    "U+0042 B\nU+0048 H\nU+004B K\nU+004D M\nU+0069 i\nU+006C l\n"                        \
    "U+007A z\n"                                                                           \
    "merges 21\n"                                                                          \
    "a t\n▁ t\nh e\n▁t he\n▁ s\n▁ d\no g\n▁ a\n▁s at\n▁ o\n▁ D\n"                        \
    "▁ c\na ß\ne r\nn d\nu f\n▁s aß\n▁d og\n▁a uf\n▁o n\n▁c at\n"                         \
    "end\n"
static const char TINY_MODEL_V1[] = "transformer.c bpe v1\n" TINY_MODEL_BODY;
static const char TINY_MODEL_V2[] = "transformer.c bpe v2\n" TINY_MODEL_BODY;

static char tmpdir[64];

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

/* Encodes and decodes s; checks the text comes back byte for byte and that
 * no <unk> appears. */
static void check_round_trip(const tfm_bpe *b, const char *what, const char *s, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    tfm_status st = tfm_bpe_encode(b, s, len, &ids, &n);
    CHECK(st == TFM_OK, "%s: encode: %s", what, tfm_last_error());
    int unk = 0;
    for (size_t i = 0; i < n; i++) unk |= ids[i] == TFM_BPE_UNK;
    CHECK(!unk, "%s: <unk> produced", what);
    char *text = NULL;
    size_t tlen = 0;
    st = tfm_bpe_decode(b, ids, n, &text, &tlen);
    CHECK(st == TFM_OK, "%s: decode: %s", what, tfm_last_error());
    CHECK(text && tlen == len && !memcmp(text, s, len), "%s: round trip gave '%s' for '%.*s'",
          what, text ? text : "(null)", (int)len, s);
    /* The text form parses back to the same ids. */
    char *pieces = NULL;
    st = tfm_bpe_encode_pieces(b, s, len, &pieces, NULL);
    CHECK(st == TFM_OK, "%s: encode_pieces: %s", what, tfm_last_error());
    size_t k = 0;
    int same = 1;
    for (char *p = pieces; p && *p && same;) {
        char *sp = strchr(p, ' ');
        size_t pl = sp ? (size_t)(sp - p) : strlen(p);
        same = k < n && tfm_bpe_piece_id(b, p, pl) == ids[k];
        k++;
        p += pl + (sp != NULL);
    }
    CHECK(same && k == n, "%s: pieces '%s' do not parse back to the ids", what,
          pieces ? pieces : "");
    free(pieces);
    free(text);
    free(ids);
}

static const char *const TRICKY[] = {
    "Café naïve résumé Übermäßig Grüße Straße ß",
    "中文字符 日本語のテキスト 한국어",
    "emoji 😀 👍🏽 family 👨‍👩‍👧‍👦 flag 🇩🇪 heart ❤️",
    "repeated   spaces    here",
    "  leading and trailing  ",
    " ",
    "     ",
    "\ttabs\tinside\t",
    "no\u00a0break\u00a0space and\u3000ideographic space",
    "a literal ▁ meta symbol ▁▁ and ▁x",
    "▁",
    "<s> </s> <pad> <unk> <0x41> look like reserved pieces",
    "control \x01\x1f\x7f and carriage return\r",
    "mixed\u2028line\u2029separators\xC2\x85",
    "",
};

/* The golden encodings of the tiny model: the same for v1 and v2. */
static void check_tiny_golden(const tfm_bpe *b, const char *what) {
    struct {
        const char *text;
        int32_t ids[32];
        const char *pieces[32];
        size_t n;
    } golden[] = {
        {"the cat saß on the Matte, the zebra ☃",
         {288, 305, 301, 304, 288, 260, 281, 285, 261, 263, 48, 288, 260, 284, 263, 102, 272,
          262, 260, 230, 156, 135},
         {"▁the", "▁cat", "▁saß", "▁on", "▁the", "▁", "M", "at", "t", "e", "<0x2C>", "▁the", "▁",
          "z", "e", "<0x62>", "r", "a", "▁", "<0xE2>", "<0x98>", "<0x83>"},
         22},
        {"  the\tdog.  ",
         {260, 260, 288, 13, 265, 291, 273, 260, 260},
         {"▁", "▁", "▁the", "<0x09>", "d", "og", ".", "▁", "▁"},
         9},
    };
    CHECK(tfm_bpe_piece_id(b, "▁the", strlen("▁the")) == 288, "%s: '▁the' id", what);
    for (size_t g = 0; g < sizeof golden / sizeof golden[0]; g++) {
        int32_t *ids = NULL;
        size_t n = 0;
        tfm_status st = tfm_bpe_encode(b, golden[g].text, strlen(golden[g].text), &ids, &n);
        CHECK(st == TFM_OK, "%s: encode golden %zu: %s", what, g, tfm_last_error());
        CHECK(n == golden[g].n, "%s: golden %zu: %zu ids, want %zu", what, g, n, golden[g].n);
        for (size_t i = 0; i < n && i < golden[g].n; i++) {
            CHECK(ids[i] == golden[g].ids[i], "%s: golden %zu: id %zu is %d, want %d", what, g, i,
                  ids[i], golden[g].ids[i]);
            CHECK(!strcmp(tfm_bpe_piece(b, ids[i]), golden[g].pieces[i]),
                  "%s: golden %zu: piece %zu is '%s', want '%s'", what, g, i,
                  tfm_bpe_piece(b, ids[i]), golden[g].pieces[i]);
        }
        check_round_trip(b, what, golden[g].text, strlen(golden[g].text));
        free(ids);
    }
}

/* Learns the tiny model as `version` and checks it against the golden ids and
 * the golden file; save/load and a second learn give the same model. */
static void test_golden(int version) {
    tfm_bpe_params p;
    tfm_bpe_default_params(&p);
    CHECK(p.version == 2, "default version %d", p.version);
    p.vocab_size = 400;
    p.version = version;
    const char *want_file = version == 1 ? TINY_MODEL_V1 : TINY_MODEL_V2;
    char what[16];
    snprintf(what, sizeof what, "tiny v%d", version);
    tfm_bpe *b = NULL;
    tfm_status st = tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b);
    CHECK(st == TFM_OK, "%s: learn: %s", what, tfm_last_error());
    if (!b) return;
    CHECK(tfm_bpe_version(b) == version, "%s: version %d", what, tfm_bpe_version(b));
    CHECK(tfm_bpe_vocab_size(b) == 306, "vocab %d", tfm_bpe_vocab_size(b));
    CHECK(tfm_bpe_num_chars(b) == 25, "chars %d", tfm_bpe_num_chars(b));
    CHECK(tfm_bpe_num_merges(b) == 21, "merges %d", tfm_bpe_num_merges(b));

    /* Reserved pieces. */
    CHECK(!strcmp(tfm_bpe_piece(b, 0), "<pad>") && !strcmp(tfm_bpe_piece(b, 1), "<s>") &&
              !strcmp(tfm_bpe_piece(b, 2), "</s>") && !strcmp(tfm_bpe_piece(b, 3), "<unk>"),
          "special pieces");
    CHECK(!strcmp(tfm_bpe_piece(b, 4), "<0x00>") && !strcmp(tfm_bpe_piece(b, 259), "<0xFF>"),
          "byte pieces");
    CHECK(!strcmp(tfm_bpe_piece(b, 260), "▁"), "first piece is '%s'", tfm_bpe_piece(b, 260));
    CHECK(tfm_bpe_piece(b, 306) == NULL && tfm_bpe_piece(b, -1) == NULL, "piece out of range");
    CHECK(tfm_bpe_piece_id(b, "<0x2C>", 6) == 4 + 0x2C, "byte piece id");
    CHECK(tfm_bpe_piece_id(b, "</s>", 4) == 2, "eos piece id");
    CHECK(tfm_bpe_piece_id(b, "xyz", 3) == -1, "unknown piece id");
    check_tiny_golden(b, what);

    /* The saved file, byte for byte. */
    char path[128];
    snprintf(path, sizeof path, "%s/tiny.model", tmpdir);
    st = tfm_bpe_save(b, path);
    CHECK(st == TFM_OK, "save: %s", tfm_last_error());
    size_t len = 0;
    char *file = read_all(path, &len);
    CHECK(file && len == strlen(want_file) && !memcmp(file, want_file, len),
          "%s: model file differs from the golden text:\n%s", what, file ? file : "(unreadable)");
    free(file);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0, "save left %s behind", tmp);

    /* Learning is deterministic. */
    tfm_bpe *b2 = NULL;
    st = tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b2);
    CHECK(st == TFM_OK && b2 && tfm_bpe_vocab_size(b2) == tfm_bpe_vocab_size(b),
          "second learn differs");
    for (int32_t i = 0; b2 && i < tfm_bpe_vocab_size(b); i++)
        CHECK(!strcmp(tfm_bpe_piece(b, i), tfm_bpe_piece(b2, i)), "piece %d differs", i);
    tfm_bpe_free(b2);

    /* Load gives a model that encodes and decodes identically. */
    tfm_bpe *l = NULL;
    st = tfm_bpe_load(path, &l);
    CHECK(st == TFM_OK, "load: %s", tfm_last_error());
    if (l) {
        CHECK(tfm_bpe_version(l) == version, "%s: loaded version %d", what, tfm_bpe_version(l));
        CHECK(tfm_bpe_vocab_size(l) == tfm_bpe_vocab_size(b), "loaded vocab size");
        for (int32_t i = 0; i < tfm_bpe_vocab_size(b); i++)
            CHECK(!strcmp(tfm_bpe_piece(b, i), tfm_bpe_piece(l, i)), "loaded piece %d", i);
        for (size_t t = 0; t < sizeof TRICKY / sizeof TRICKY[0]; t++) {
            int32_t *x = NULL, *y = NULL;
            size_t nx = 0, ny = 0;
            tfm_bpe_encode(b, TRICKY[t], strlen(TRICKY[t]), &x, &nx);
            tfm_bpe_encode(l, TRICKY[t], strlen(TRICKY[t]), &y, &ny);
            CHECK(nx == ny && (!nx || !memcmp(x, y, nx * sizeof *x)),
                  "loaded model encodes '%s' differently", TRICKY[t]);
            free(x);
            free(y);
        }
        tfm_bpe_free(l);
    }
    remove(path);

    for (size_t t = 0; t < sizeof TRICKY / sizeof TRICKY[0]; t++)
        check_round_trip(b, what, TRICKY[t], strlen(TRICKY[t]));
    tfm_bpe_free(b);
}

/* A v1 model file as older builds wrote it (not made by this build's
 * trainer) loads as v1 and gives the ids it always gave. */
static void test_v1_file(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/old.model", tmpdir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "create %s", path);
    if (!f) return;
    fputs(TINY_MODEL_V1, f);
    fclose(f);
    tfm_bpe *b = NULL;
    tfm_status st = tfm_bpe_load(path, &b);
    CHECK(st == TFM_OK && b, "load v1 file: %s", tfm_last_error());
    if (b) {
        CHECK(tfm_bpe_version(b) == 1, "v1 file loaded as version %d", tfm_bpe_version(b));
        check_tiny_golden(b, "v1 file");
        char *pieces = NULL;
        st = tfm_bpe_encode_pieces(b, "the dog.", 8, &pieces, NULL);
        CHECK(st == TFM_OK && pieces && !strcmp(pieces, "▁the ▁dog ."), "v1 'the dog.': '%s'",
              pieces ? pieces : "");
        free(pieces);
        /* Saving it again keeps it v1, byte for byte. */
        char path2[160];
        snprintf(path2, sizeof path2, "%s/old2.model", tmpdir);
        CHECK(tfm_bpe_save(b, path2) == TFM_OK, "save v1: %s", tfm_last_error());
        size_t len = 0;
        char *file = read_all(path2, &len);
        CHECK(file && len == strlen(TINY_MODEL_V1) && !memcmp(file, TINY_MODEL_V1, len),
              "a loaded v1 model saves differently:\n%s", file ? file : "(unreadable)");
        free(file);
        remove(path2);
        for (size_t t = 0; t < sizeof TRICKY / sizeof TRICKY[0]; t++)
            check_round_trip(b, "v1 file", TRICKY[t], strlen(TRICKY[t]));
    }
    tfm_bpe_free(b);
    remove(path);
}

/* The words of text under `version`, joined by '|' (a space as '▁'). */
static void words_of(const char *text, int version, char *out, size_t cap) {
    size_t len = strlen(text);
    uint32_t *cps = malloc((len + 1) * sizeof *cps), *starts = malloc((len + 2) * sizeof *starts);
    size_t bad = 0, nw = tfm_bpe_pretokenize(text, len, version, cps, starts, &bad);
    size_t o = 0;
    out[0] = '\0';
    for (size_t w = 0; w < nw && nw != (size_t)-1; w++) {
        if (w && o + 1 < cap) out[o++] = '|';
        for (uint32_t i = starts[w]; i < starts[w + 1]; i++) {
            char buf[4];
            uint32_t cp = cps[i] == TFM_BPE_META_CP ? 0x2581 : cps[i];
            int k = tfm_utf8_encode(cp, buf);
            if (o + (size_t)k < cap) memcpy(out + o, buf, (size_t)k), o += (size_t)k;
        }
    }
    out[o < cap ? o : cap - 1] = '\0';
    free(cps);
    free(starts);
}

static void test_pretokenize(void) {
    static const struct {
        int version;
        const char *text, *words;
    } cases[] = {
        {2, "Fahrrad.", "▁Fahrrad|."},
        {2, "Das Fahrrad.", "▁Das|▁Fahrrad|."},
        {2, "2016er abc2016 x2y 3.14", "▁2016|er|▁abc|2016|▁x|2|y|▁3|.|14"},
        {2, "Hallo... (Welt)!?", "▁Hallo|...|▁(|Welt|)!?"},
        {2, "it's a T-Shirt", "▁it|'|s|▁a|▁T|-|Shirt"},
        {2, "Übermäßig Straße ß", "▁Übermäßig|▁Straße|▁ß"},
        /* Combining marks stay with what they follow, even at a word start. */
        {2, "cafe\xCC\x81, e\xCC\x81te\xCC\x81", "▁cafe\xCC\x81|,|▁e\xCC\x81te\xCC\x81"},
        {2, "\xCC\x81x .\xCC\x81x", "▁\xCC\x81x|▁.\xCC\x81|x"},
        /* Emoji: symbols, with their joiners, selectors and modifiers. */
        {2, "❤️ 👨‍👩‍👧 👍🏽🇩🇪 1️⃣", "▁❤️|▁👨‍👩‍👧|▁👍🏽🇩🇪|▁1️⃣"},
        {2, "x²+½ Ⅻ", "▁x|²|+|½|▁Ⅻ"},
        {2, "中文。コーヒー、한국어", "▁中文|。|コーヒー|、|한국어"},
        {2, "a\tb  c\x01" "d", "▁a|\t|b|▁|▁c|\x01|d"},
        {2, " ", "▁|▁"},
        /* The example of docs/bpe.md. */
        {2, "Das Fahrrad...  2016er, it's e\xCC\x81",
         "▁Das|▁Fahrrad|...|▁|▁2016|er|,|▁it|'|s|▁e\xCC\x81"},
        {1, "Das Fahrrad. 2016er", "▁Das|▁Fahrrad.|▁2016er"},
        {1, "a\tb  c\x01" "d", "▁a|\t|b|▁|▁c\x01" "d"},
    };
    char got[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        words_of(cases[i].text, cases[i].version, got, sizeof got);
        CHECK(!strcmp(got, cases[i].words), "v%d words of '%s': '%s', want '%s'",
              cases[i].version, cases[i].text, got, cases[i].words);
    }
    CHECK(tfm_bpe_char_class('a') == TFM_BPE_CLASS_LETTER &&
              tfm_bpe_char_class(0xE4) == TFM_BPE_CLASS_LETTER &&
              tfm_bpe_char_class(0x4E2D) == TFM_BPE_CLASS_LETTER &&
              tfm_bpe_char_class('7') == TFM_BPE_CLASS_DIGIT &&
              tfm_bpe_char_class(0x0663) == TFM_BPE_CLASS_DIGIT &&
              tfm_bpe_char_class('.') == TFM_BPE_CLASS_OTHER &&
              tfm_bpe_char_class(0xD7) == TFM_BPE_CLASS_OTHER &&
              tfm_bpe_char_class(0x2581) == TFM_BPE_CLASS_OTHER &&
              tfm_bpe_char_class(0x0301) == TFM_BPE_CLASS_EXTEND &&
              tfm_bpe_char_class(0x200D) == TFM_BPE_CLASS_EXTEND,
          "character classes");
}

/* 1 when the piece's characters (after a leading '▁', marks aside) are all
 * of one class: what v2 guarantees of every piece it learns. */
static int one_class(const char *piece) {
    const char *p = piece, *end = piece + strlen(piece);
    if (!strncmp(p, TFM_BPE_META, 3)) p += 3;
    int cls = 0;
    while (p < end) {
        uint32_t cp;
        int k = tfm_utf8_decode(p, end, &cp);
        if (!k) return 0;
        p += k;
        int c = tfm_bpe_char_class(cp);
        if (c == TFM_BPE_CLASS_EXTEND) continue;
        if (cls && c != cls) return 0;
        cls = c;
    }
    return 1;
}

/* Counts the learned pieces (characters and merges) that mix classes. */
static int mixed_pieces(const tfm_bpe *b, const char **example) {
    int mixed = 0;
    for (int32_t id = TFM_BPE_FIRST_PIECE; id < tfm_bpe_vocab_size(b); id++)
        if (!one_class(tfm_bpe_piece(b, id))) {
            if (!mixed && example) *example = tfm_bpe_piece(b, id);
            mixed++;
        }
    return mixed;
}

/* Text where whitespace-only pre-tokenization learns "▁Fahrrad." and
 * "▁2016er". */
static const char SPLIT[] = "Das Fahrrad. Ein Fahrrad.\n"
                            "Das rote Fahrrad, 2016.\n"
                            "Im Jahr 2016er fuhr das Fahrrad.\n"
                            "Die 2016er Fahrräder!\n"
                            "Das Fahrrad... 2016er\n";

static void check_encoding(const tfm_bpe *b, const char *what, const char *text,
                           const char *want_pieces, const int32_t *want_ids, size_t nwant) {
    char *pieces = NULL;
    tfm_status st = tfm_bpe_encode_pieces(b, text, strlen(text), &pieces, NULL);
    CHECK(st == TFM_OK && pieces && !strcmp(pieces, want_pieces), "%s: '%s' gave '%s', want '%s'",
          what, text, pieces ? pieces : "", want_pieces);
    free(pieces);
    int32_t *ids = NULL;
    size_t n = 0;
    st = tfm_bpe_encode(b, text, strlen(text), &ids, &n);
    CHECK(st == TFM_OK && n == nwant && !memcmp(ids, want_ids, n * sizeof *ids),
          "%s: ids of '%s' differ from the golden ids", what, text);
    free(ids);
    check_round_trip(b, what, text, strlen(text));
}

static void test_split(void) {
    tfm_bpe_params p;
    tfm_bpe_default_params(&p);
    p.vocab_size = 400;
    tfm_bpe *v2 = NULL, *v1 = NULL;
    CHECK(tfm_bpe_learn_text(&p, SPLIT, strlen(SPLIT), &v2) == TFM_OK, "learn v2: %s",
          tfm_last_error());
    p.version = 1;
    CHECK(tfm_bpe_learn_text(&p, SPLIT, strlen(SPLIT), &v1) == TFM_OK, "learn v1: %s",
          tfm_last_error());
    if (!v1 || !v2) {
        tfm_bpe_free(v1);
        tfm_bpe_free(v2);
        return;
    }
    CHECK(tfm_bpe_version(v2) == 2 && tfm_bpe_version(v1) == 1, "versions %d %d",
          tfm_bpe_version(v2), tfm_bpe_version(v1));
    CHECK(tfm_bpe_vocab_size(v2) == 303 && tfm_bpe_num_merges(v2) == 16, "v2: vocab %d merges %d",
          tfm_bpe_vocab_size(v2), tfm_bpe_num_merges(v2));

    /* The old behaviour, and what v2 makes of the same text. */
    const int32_t v1_fahrrad[] = {302, 299};
    check_encoding(v1, "split v1", "Das Fahrrad.", "▁Das ▁Fahrrad.", v1_fahrrad, 2);
    const int32_t v2_fahrrad[] = {301, 293, 264};
    check_encoding(v2, "split v2", "Das Fahrrad.", "▁Das ▁Fahrrad .", v2_fahrrad, 3);
    const int32_t v2_fahrrad_only[] = {293, 264};
    check_encoding(v2, "split v2", "Fahrrad.", "▁Fahrrad .", v2_fahrrad_only, 2);
    const int32_t v1_2016[] = {260, 279, 288, 303, 276, 260, 262, 102, 103, 270, 298, 271};
    check_encoding(v1, "split v1", "Jahr 2016er, abc2016",
                   "▁ J ahr ▁2016er , ▁ a <0x62> <0x63> 2 01 6", v1_2016, 12);
    const int32_t v2_2016[] = {260, 279, 288, 300, 297, 276, 260, 262, 102, 103, 270, 298, 271};
    check_encoding(v2, "split v2", "Jahr 2016er, abc2016",
                   "▁ J ahr ▁2016 er , ▁ a <0x62> <0x63> 2 01 6", v2_2016, 13);
    /* A run of punctuation is one word: its characters may merge. */
    const int32_t v2_dots[] = {301, 293, 302, 264};
    check_encoding(v2, "split v2", "Das Fahrrad...", "▁Das ▁Fahrrad .. .", v2_dots, 4);

    /* No v2 piece mixes classes; v1 learned some that do. */
    const char *example = NULL;
    int mixed = mixed_pieces(v2, &example);
    CHECK(mixed == 0, "v2 learned %d pieces that mix classes, e.g. '%s'", mixed,
          example ? example : "");
    CHECK(mixed_pieces(v1, NULL) >= 2, "v1 learned no piece that mixes classes");

    /* Save and load keep v2 and its encodings. */
    char path[128];
    snprintf(path, sizeof path, "%s/split.model", tmpdir);
    CHECK(tfm_bpe_save(v2, path) == TFM_OK, "save: %s", tfm_last_error());
    size_t len = 0;
    char *file = read_all(path, &len);
    CHECK(file && len > 21 && !memcmp(file, "transformer.c bpe v2\n", 21), "v2 header");
    free(file);
    tfm_bpe *l = NULL;
    CHECK(tfm_bpe_load(path, &l) == TFM_OK && l && tfm_bpe_version(l) == 2, "load v2: %s",
          tfm_last_error());
    if (l) check_encoding(l, "split v2 loaded", "Jahr 2016er, abc2016",
                          "▁ J ahr ▁2016 er , ▁ a <0x62> <0x63> 2 01 6", v2_2016, 13);
    tfm_bpe_free(l);
    remove(path);

    for (size_t t = 0; t < sizeof TRICKY / sizeof TRICKY[0]; t++) {
        check_round_trip(v2, "split v2", TRICKY[t], strlen(TRICKY[t]));
        check_round_trip(v1, "split v1", TRICKY[t], strlen(TRICKY[t]));
    }
    const char *more[] = {"Fahrrad.2016er...!!", "1️⃣ x²+½ cafe\xCC\x81 \xCC\x81x .\xCC\x81x",
                          "中文。コーヒー、한국어 3.14", SPLIT};
    for (size_t t = 0; t < sizeof more / sizeof more[0]; t++) {
        check_round_trip(v2, "split v2", more[t], strlen(more[t]));
        check_round_trip(v1, "split v1", more[t], strlen(more[t]));
    }
    tfm_bpe_free(v1);
    tfm_bpe_free(v2);
}

static void test_fallback_and_errors(void) {
    tfm_bpe_params p;
    tfm_bpe_default_params(&p);
    p.vocab_size = 400;
    tfm_bpe *b = NULL;
    if (tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b) != TFM_OK) {
        CHECK(0, "learn: %s", tfm_last_error());
        return;
    }
    /* An unseen character is its UTF-8 bytes, after the dummy prefix. */
    int32_t ids[16];
    size_t n = 0;
    tfm_status st = tfm_bpe_encode_into(b, "中", 3, ids, 16, &n);
    CHECK(st == TFM_OK && n == 4 && ids[0] == 260 && ids[1] == 4 + 0xE4 && ids[2] == 4 + 0xB8 &&
              ids[3] == 4 + 0xAD,
          "unseen character: n=%zu", n);
    /* A literal '▁' is bytes too, never the space symbol. */
    st = tfm_bpe_encode_into(b, "z▁", 4, ids, 16, &n);
    CHECK(st == TFM_OK && n == 5 && ids[0] == 260 && ids[1] == 284 && ids[2] == 4 + 0xE2 &&
              ids[3] == 4 + 0x96 && ids[4] == 4 + 0x81,
          "literal U+2581: n=%zu", n);
    /* U+0000 is a character like any other, spelled as a byte. */
    st = tfm_bpe_encode_into(b, "a\0b", 3, ids, 16, &n);
    CHECK(st == TFM_OK && n == 3 && ids[0] == 292 && ids[1] == 4 && ids[2] == 4 + 'b', "NUL: n=%zu",
          n);
    check_round_trip(b, "NUL", "a\0b", 3);
    /* Empty text: no ids. */
    st = tfm_bpe_encode_into(b, "", 0, ids, 16, &n);
    CHECK(st == TFM_OK && n == 0, "empty text gave %zu ids", n);
    /* A buffer that is too small reports the size needed. */
    st = tfm_bpe_encode_into(b, "中", 3, ids, 2, &n);
    CHECK(st == TFM_ERR_INVALID && n == 4, "small buffer: status %d n=%zu", st, n);
    /* Invalid UTF-8: overlong, surrogate, truncated, stray continuation. */
    const char *bad[] = {"ab\xC0\xAF", "x\xED\xA0\x80", "caf\xC3", "\x80", "ok \xF5\x80\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *out = NULL;
        st = tfm_bpe_encode(b, bad[i], strlen(bad[i]), &out, &n);
        CHECK(st == TFM_ERR_INVALID && strstr(tfm_last_error(), "invalid UTF-8 at byte"),
              "bad UTF-8 %zu: status %d, message '%s'", i, st, tfm_last_error());
        free(out);
    }
    /* Decode skips special ids and rejects ids out of range. */
    int32_t with_specials[] = {1, 288, 0, 305, 2, 3};
    char *text = NULL;
    st = tfm_bpe_decode(b, with_specials, 6, &text, NULL);
    CHECK(st == TFM_OK && text && !strcmp(text, "the cat"), "decode with specials: '%s'",
          text ? text : "");
    free(text);
    int32_t out_of_range[] = {288, 306};
    text = NULL;
    st = tfm_bpe_decode(b, out_of_range, 2, &text, NULL);
    CHECK(st == TFM_ERR_INVALID && !text && strstr(tfm_last_error(), "306"),
          "id out of range: status %d '%s'", st, tfm_last_error());
    int32_t negative[] = {-1};
    st = tfm_bpe_decode(b, negative, 1, &text, NULL);
    CHECK(st == TFM_ERR_INVALID, "negative id accepted");
    /* Only the dummy prefix is dropped: a byte token for a space stays. */
    int32_t byte_space[] = {4 + ' ', 261};
    text = NULL;
    st = tfm_bpe_decode(b, byte_space, 2, &text, NULL);
    CHECK(st == TFM_OK && text && !strcmp(text, " t"), "byte space: '%s'", text ? text : "");
    free(text);
    tfm_bpe_free(b);

    /* Bad parameters and bad training text. */
    tfm_bpe_default_params(&p);
    p.vocab_size = 260;
    st = tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b);
    CHECK(st == TFM_ERR_INVALID && !b, "vocab_size 260 accepted");
    tfm_bpe_default_params(&p);
    p.char_coverage = 0;
    st = tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b);
    CHECK(st == TFM_ERR_INVALID, "char_coverage 0 accepted");
    tfm_bpe_default_params(&p);
    st = tfm_bpe_learn_text(&p, "fine\nbad \xFF here\n", 16, &b);
    CHECK(st == TFM_ERR_FORMAT && strstr(tfm_last_error(), "<text>:2:"),
          "invalid UTF-8 in training text: status %d '%s'", st, tfm_last_error());
    const char *missing = "/nonexistent/bpe-train.txt";
    st = tfm_bpe_learn(&p, &missing, 1, &b);
    CHECK(st == TFM_ERR_IO && strstr(tfm_last_error(), missing), "missing file: '%s'",
          tfm_last_error());

    /* A vocabulary that only fits some characters: the rest go to bytes. */
    tfm_bpe_default_params(&p);
    p.vocab_size = 265;
    st = tfm_bpe_learn_text(&p, TINY, strlen(TINY), &b);
    CHECK(st == TFM_OK && b && tfm_bpe_vocab_size(b) == 265 && tfm_bpe_num_chars(b) == 5 &&
              tfm_bpe_num_merges(b) == 0,
          "vocab 265: %s", tfm_last_error());
    for (size_t t = 0; b && t < sizeof TRICKY / sizeof TRICKY[0]; t++)
        check_round_trip(b, "265", TRICKY[t], strlen(TRICKY[t]));
    tfm_bpe_free(b);
}

static void test_build(void) {
    tfm_bpe *b = NULL;
    tfm_status st = tfm_bpe_build_new(2, &b);
    CHECK(st == TFM_OK && b, "build_new");
    if (!b) return;
    int32_t meta, a, bb, c, lt, s, gt, bc, abc, ab, abc2, ls, x;
    CHECK(tfm_bpe_build_char(b, 0x2581, &meta) == TFM_OK && meta == 260, "meta");
    CHECK(tfm_bpe_build_char(b, 'a', &a) == TFM_OK && a == 261, "a");
    CHECK(tfm_bpe_build_char(b, 'b', &bb) == TFM_OK, "b");
    CHECK(tfm_bpe_build_char(b, 'c', &c) == TFM_OK, "c");
    CHECK(tfm_bpe_build_char(b, '<', &lt) == TFM_OK, "<");
    CHECK(tfm_bpe_build_char(b, 's', &s) == TFM_OK, "s");
    CHECK(tfm_bpe_build_char(b, '>', &gt) == TFM_OK, ">");
    CHECK(tfm_bpe_build_char(b, 'a', &x) == TFM_ERR_INVALID, "duplicate char accepted");
    CHECK(tfm_bpe_build_char(b, ' ', &x) == TFM_ERR_INVALID, "space accepted as a char");
    CHECK(tfm_bpe_build_char(b, 0, &x) == TFM_ERR_INVALID, "U+0000 accepted");
    CHECK(tfm_bpe_build_char(b, 0xD800, &x) == TFM_ERR_INVALID, "surrogate accepted");
    CHECK(tfm_bpe_build_merge(b, bb, c, &bc) == TFM_OK && bc == 267, "b c");
    CHECK(tfm_bpe_build_merge(b, a, bc, &abc) == TFM_OK && abc == 268, "a bc");
    CHECK(tfm_bpe_build_merge(b, a, bb, &ab) == TFM_OK && ab == 269, "a b");
    CHECK(tfm_bpe_build_merge(b, ab, c, &abc2) == TFM_OK && abc2 == abc,
          "ab c made %d, want the existing %d", abc2, abc);
    CHECK(tfm_bpe_vocab_size(b) == 270, "vocab %d", tfm_bpe_vocab_size(b));
    CHECK(tfm_bpe_build_merge(b, a, bb, &x) == TFM_ERR_INVALID, "merge listed twice accepted");
    CHECK(tfm_bpe_build_merge(b, lt, s, &ls) == TFM_OK, "< s");
    CHECK(tfm_bpe_build_merge(b, ls, gt, &x) == TFM_ERR_INVALID, "merge making '<s>' accepted");
    CHECK(tfm_bpe_build_merge(b, 4, a, &x) == TFM_ERR_INVALID, "merge of a byte accepted");
    CHECK(tfm_bpe_build_char(b, 'z', &x) == TFM_ERR_INVALID, "char after merges accepted");
    int32_t ids[8];
    size_t n = 0;
    st = tfm_bpe_encode_into(b, "abc", 3, ids, 8, &n);
    CHECK(st == TFM_OK && n == 2 && ids[0] == meta && ids[1] == abc, "abc: n=%zu", n);
    check_round_trip(b, "build", "abc <s> cab", 11);
    tfm_bpe_free(b);
}

typedef struct job {
    const tfm_bpe *b;
    const char *text;
    size_t len;
    int32_t *want;
    size_t nwant;
    int ok;
} job;

static void *encode_job(void *arg) {
    job *j = arg;
    j->ok = 1;
    for (int rep = 0; rep < 20 && j->ok; rep++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tfm_bpe_encode(j->b, j->text, j->len, &ids, &n) != TFM_OK || n != j->nwant ||
            memcmp(ids, j->want, n * sizeof *ids))
            j->ok = 0;
        free(ids);
    }
    return NULL;
}

static void test_threads(const tfm_bpe *b, const char *text, size_t len) {
    enum { THREADS = 4 };
    int32_t *want = NULL;
    size_t nwant = 0;
    CHECK(tfm_bpe_encode(b, text, len, &want, &nwant) == TFM_OK, "encode");
    pthread_t th[THREADS];
    job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (job){b, text, len, want, nwant, 0};
        CHECK(pthread_create(&th[i], NULL, encode_job, &jobs[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].ok, "thread %d encoded differently", i);
    }
    free(want);
}

static void multi30k(int version, const char *en, const char *de, const char *val_en,
                     const char *val_de);

static void test_multi30k(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data/multi30k",
             tfm_test_env("TFM_SHARED_DIR", "/work/shared"));
    char en[600], de[600], val_en[600], val_de[600];
    snprintf(en, sizeof en, "%s/train.en", dir);
    snprintf(de, sizeof de, "%s/train.de", dir);
    snprintf(val_en, sizeof val_en, "%s/val.en", dir);
    snprintf(val_de, sizeof val_de, "%s/val.de", dir);
    if (access(en, R_OK) || access(de, R_OK) || access(val_en, R_OK) || access(val_de, R_OK)) {
        printf("SKIP multi30k part: %s/{train,val}.{en,de} not found (set TFM_SHARED_DIR)\n", dir);
        return;
    }
    for (int version = 2; version >= 1; version--) multi30k(version, en, de, val_en, val_de);
}

/* Learns a 2000 vocabulary of `version` on Multi30k train and round-trips val. */
static void multi30k(int version, const char *en, const char *de, const char *val_en,
                     const char *val_de) {
    tfm_bpe_params p;
    tfm_bpe_default_params(&p);
    p.vocab_size = 2000;
    p.version = version;
    const char *files[] = {en, de};
    tfm_bpe *b = NULL;
    tfm_status st = tfm_bpe_learn(&p, files, 2, &b);
    CHECK(st == TFM_OK, "learn multi30k v%d: %s", version, tfm_last_error());
    if (!b) return;
    CHECK(tfm_bpe_vocab_size(b) == 2000, "vocab %d", tfm_bpe_vocab_size(b));
    const char *example = NULL;
    int mixed = mixed_pieces(b, &example);
    if (version >= 2)
        CHECK(mixed == 0, "multi30k v2: %d pieces mix classes, e.g. '%s'", mixed,
              example ? example : "");
    printf("multi30k v%d: %d of %d pieces mix character classes\n", version, mixed,
           tfm_bpe_vocab_size(b) - TFM_BPE_FIRST_PIECE);
    const char *vals[] = {val_en, val_de};
    for (int v = 0; v < 2; v++) {
        size_t len = 0;
        char *text = read_all(vals[v], &len);
        CHECK(text != NULL, "read %s", vals[v]);
        if (!text) continue;
        size_t lines = 0, tokens = 0, words = 0, mismatches = 0;
        for (char *p0 = text, *end = text + len; p0 < end;) {
            char *nl = memchr(p0, '\n', (size_t)(end - p0));
            size_t l = (size_t)((nl ? nl : end) - p0);
            int32_t *ids = NULL;
            size_t n = 0;
            char *back = NULL;
            size_t blen = 0;
            if (tfm_bpe_encode(b, p0, l, &ids, &n) != TFM_OK ||
                tfm_bpe_decode(b, ids, n, &back, &blen) != TFM_OK || blen != l ||
                memcmp(back, p0, l)) {
                if (mismatches++ < 3)
                    printf("  mismatch at %s:%zu: '%.*s'\n", vals[v], lines + 1, (int)l, p0);
            }
            for (size_t i = 0; i < n; i++)
                CHECK(ids[i] >= TFM_BPE_BYTE0, "special id %d in an encoding", ids[i]);
            for (size_t i = 0; i < l; i++) words += p0[i] == ' ';
            words++;
            tokens += n;
            lines++;
            free(ids);
            free(back);
            p0 = nl ? nl + 1 : end;
        }
        CHECK(mismatches == 0, "%s: %zu of %zu lines do not round-trip", vals[v], mismatches,
              lines);
        printf("v%d %s: %zu lines round-trip, %.2f tokens per word\n", version, vals[v], lines,
               (double)tokens / (double)words);
        CHECK((double)tokens / (double)words < 2.0, "%s: %.2f tokens per word", vals[v],
              (double)tokens / (double)words);
        if (v == 1 && version >= 2) test_threads(b, text, len);
        free(text);
    }
    tfm_bpe_free(b);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tfm_test_bpe_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_golden(1);
    test_golden(2);
    test_v1_file();
    test_pretokenize();
    test_split();
    test_fallback_and_errors();
    test_build();
    test_multi30k();
    rmdir(tmpdir);
    return tfm_test_finish();
}
