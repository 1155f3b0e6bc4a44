/*
 * test_bad_corpus.c: bad input to the corpus reader gives a clear error, never
 * a crash or a leak (run it under -DTFM_SANITIZE=ON too).
 *
 *   - unequal line counts: the message names both files and both counts;
 *   - invalid UTF-8 on either side: the file and the line;
 *   - a missing file, a directory;
 *   - nothing left after the filters (all empty, all too long, empty files);
 *   - bad parameters: the field;
 *   - the language-model reader: missing file, invalid UTF-8, too short.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "text/bpe.h"
#include "text/corpus.h"

static char tmpdir[64];
static tfm_bpe *bpe;

static const char *path_of(const char *name) {
    static char paths[64][160]; /* each call gets its own, for the whole test */
    static int k;
    char *p = paths[k++ % 64];
    snprintf(p, 160, "%s/%s", tmpdir, name);
    return p;
}

static const char *write_file(const char *name, const char *data) {
    const char *path = path_of(name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fwrite(data, 1, strlen(data), f);
    fclose(f);
    return path;
}

/* Loads (src, tgt) with p; expects status `want` and every one of the
 * NULL-terminated strings in the message. */
static void expect(const char *what, const tfm_corpus_params *p, const char *src, const char *tgt,
                   tfm_status want, const char *const *needles) {
    tfm_corpus *c = (tfm_corpus *)1;
    tfm_corpus_stats st;
    tfm_status s = tgt ? tfm_corpus_load(p, bpe, src, tgt, &c, &st)
                       : tfm_corpus_load_lm(p, bpe, src, &c, &st);
    const char *msg = tfm_last_error();
    printf("%-28s -> %s: %s\n", what, tfm_status_name(s), msg);
    CHECK(s == want, "%s: status %s, want %s", what, tfm_status_name(s), tfm_status_name(want));
    CHECK(c == NULL, "%s: *out not NULL on failure", what);
    for (const char *const *n = needles; *n; n++)
        CHECK(strstr(msg, *n) != NULL, "%s: message '%s' lacks '%s'", what, msg, *n);
    if (s == TFM_OK) tfm_corpus_free(c);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tfm_bad_corpus_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    static const char text[] = "the cat sat on the mat\nthe dog sat on the log\n"
                               "Der Hund saß auf der Matte.\nDie Katze saß auf dem Baum.\n";
    tfm_bpe_params bp;
    tfm_bpe_default_params(&bp);
    bp.vocab_size = 300;
    if (tfm_bpe_learn_text(&bp, text, strlen(text), &bpe) != TFM_OK) {
        fprintf(stderr, "learn: %s\n", tfm_last_error());
        return 1;
    }
    tfm_corpus_params p;
    tfm_corpus_default_params(&p);

    const char *good_src = write_file("good.de", "Der Hund\nDie Katze\nDer Baum\n");
    const char *good_tgt = write_file("good.en", "the dog\nthe cat\nthe tree");
    {
        tfm_corpus *c = NULL;
        CHECK(tfm_corpus_load(&p, bpe, good_src, good_tgt, &c, NULL) == TFM_OK,
              "the good pair fails: %s", tfm_last_error());
        tfm_corpus_free(c);
    }

    /* Unequal line counts, either way round; a missing final '\n' is no line. */
    {
        const char *a = write_file("train.de", "a\nb\nc\n");
        const char *b = write_file("train.en", "a\nb\n");
        const char *n1[] = {"train.de has 3 lines but", "train.en has 2", NULL};
        expect("unequal lines", &p, a, b, TFM_ERR_FORMAT, n1);
        const char *n2[] = {"train.en has 2 lines but", "train.de has 3", NULL};
        expect("unequal lines (swapped)", &p, b, a, TFM_ERR_FORMAT, n2);
        const char *c3 = write_file("three.en", "a\nb\nc\n\n");
        const char *n3[] = {"has 3 lines", "three.en has 4", NULL};
        expect("an extra empty line", &p, a, c3, TFM_ERR_FORMAT, n3);
    }

    /* Invalid UTF-8: file, line and byte. */
    {
        const char *bad = write_file("bad.de", "Der Hund\nDie Katze\nein \xC3\x28 Baum\n");
        const char *n1[] = {"bad.de:3:", "invalid UTF-8", "byte 5", NULL};
        expect("invalid UTF-8 (source)", &p, bad, good_tgt, TFM_ERR_FORMAT, n1);
        const char *bad2 = write_file("bad.en", "the dog\n\xFF\nthe tree\n");
        const char *n2[] = {"bad.en:2:", "invalid UTF-8", NULL};
        expect("invalid UTF-8 (target)", &p, good_src, bad2, TFM_ERR_FORMAT, n2);
        const char *bad3 = write_file("surrogate.en", "a\nb\nc \xED\xA0\x80");
        const char *n3[] = {"surrogate.en:3:", NULL};
        expect("a surrogate on the last line", &p, good_src, bad3, TFM_ERR_FORMAT, n3);
        const char *n4[] = {"bad.de:3:", NULL};
        expect("invalid UTF-8 (LM)", &p, bad, NULL, TFM_ERR_FORMAT, n4);
    }

    /* Missing files, a directory. */
    {
        const char *missing = path_of("missing.de");
        const char *n1[] = {"missing.de", "cannot open", NULL};
        expect("missing source", &p, missing, good_tgt, TFM_ERR_IO, n1);
        expect("missing target", &p, good_src, missing, TFM_ERR_IO, n1);
        expect("missing LM text", &p, missing, NULL, TFM_ERR_IO, n1);
        const char *n2[] = {tmpdir, NULL};
        expect("a directory", &p, tmpdir, good_tgt, TFM_ERR_IO, n2);
    }

    /* Nothing left after the filters. */
    {
        const char *e1 = write_file("empty.de", "\n  \nDer Hund\n");
        const char *e2 = write_file("empty.en", "the dog\nthe cat\n\t\r\n");
        const char *n1[] = {"no pair left", "3 read", "3 with an empty side", NULL};
        expect("all pairs empty", &p, e1, e2, TFM_ERR_FORMAT, n1);
        tfm_corpus_params q = p;
        q.max_len = 1;
        const char *n2[] = {"no pair left", "3 with a side of more than 1 tokens (max_len)", NULL};
        expect("all pairs too long", &q, good_src, good_tgt, TFM_ERR_FORMAT, n2);
        const char *z1 = write_file("zero.de", ""), *z2 = write_file("zero.en", "");
        const char *n3[] = {"no pair left", "0 read", NULL};
        expect("empty files", &p, z1, z2, TFM_ERR_FORMAT, n3);
        const char *n4[] = {"zero.de", "too few", NULL};
        expect("empty LM text", &p, z1, NULL, TFM_ERR_FORMAT, n4);
        const char *one = write_file("one.txt", "a");
        const char *lm = write_file("lm.txt", "the cat");
        tfm_corpus *c = NULL;
        tfm_status s = tfm_corpus_load_lm(&p, bpe, one, &c, NULL);
        /* "a" is "▁a" or "▁" "a": one or two ids; fine either way, but never a crash */
        CHECK(s == TFM_OK || s == TFM_ERR_FORMAT, "one-letter LM text: %s", tfm_last_error());
        tfm_corpus_free(c);
        c = NULL;
        CHECK(tfm_corpus_load_lm(&p, bpe, lm, &c, NULL) == TFM_OK, "short LM text: %s",
              tfm_last_error());
        tfm_corpus_free(c);
    }

    /* Bad parameters name the field. */
    {
        tfm_corpus_params q;
        const char *n[] = {NULL, NULL};
        q = p, q.max_len = 0, n[0] = "max_len";
        expect("max_len 0", &q, good_src, good_tgt, TFM_ERR_INVALID, n);
        q = p, q.batch_tokens = 0, n[0] = "batch_tokens";
        expect("batch_tokens 0", &q, good_src, good_tgt, TFM_ERR_INVALID, n);
        q = p, q.max_sentences = -1, n[0] = "max_sentences";
        expect("max_sentences -1", &q, good_src, good_tgt, TFM_ERR_INVALID, n);
        q = p, q.pad_id = -1, n[0] = "pad_id";
        expect("pad_id -1", &q, good_src, NULL, TFM_ERR_INVALID, n);
    }

    tfm_bpe_free(bpe);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return tfm_test_finish();
}
