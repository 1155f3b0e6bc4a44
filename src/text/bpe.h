/*
 * bpe.h: a byte-pair-encoding tokenizer with byte fallback and exact
 * detokenization (SentencePiece's conventions, without its dependencies).
 *
 * Text model
 *   - A space (U+0020) is written as the meta symbol U+2581 '▁' at the start of
 *     the piece that follows it; spaces are never collapsed. Every non-empty
 *     text gets one extra leading '▁' (SentencePiece's "dummy prefix"), so that
 *     a sentence-initial word is encoded like the same word after a space;
 *     decoding drops it again.
 *   - Pre-tokenization: a word is an optional leading '▁' and the non-space
 *     characters after it. Any other whitespace character (tab, NBSP, U+3000,
 *     ...) is a word of its own. Merges never cross words.
 *   - Version 2 (what tfm_bpe_learn makes by default) also splits a word
 *     wherever the character class changes, as SentencePiece's
 *     split_by_unicode_script and split_by_number do: letters, digits (a run
 *     of digits stays together), and everything else (punctuation, symbols,
 *     controls; a run of them stays together). Combining marks and other
 *     extending characters join the run before them. The '▁' stays on the
 *     first run: "▁Fahrrad." is "▁Fahrrad" + ".", "▁2016er" is "▁2016" + "er".
 *     Version 1 models (whitespace only) load and encode exactly as before.
 *   - A character that is not in the vocabulary (never seen in training, too
 *     rare to be kept, U+0000, or a literal U+2581) is encoded as its UTF-8
 *     bytes, one byte token <0xHH> each. Byte tokens are never merged, and
 *     decode as raw bytes, so decode(encode(x)) == x for every valid UTF-8 x.
 *     <unk> is never produced.
 *
 * Vocabulary ids
 *   0 <pad>, 1 <s>, 2 </s>, 3 <unk>, 4..259 the byte tokens <0x00>..<0xFF>,
 *   then the characters (most frequent first), then one id per merge that made
 *   a new piece, in the order they were learned.
 *
 * Thread safety: a model is immutable once learned or loaded; encode, decode
 * and the lookups may run on one model from many threads at once.
 *
 * The trainer is bpe_train.c; loading, saving, encoding and decoding are
 * bpe.c. The model file format is described above tfm_bpe_save.
 */
#ifndef TFM_TEXT_BPE_H
#define TFM_TEXT_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "transformer.h"

typedef struct tfm_bpe tfm_bpe;

enum {
    TFM_BPE_PAD = 0,
    TFM_BPE_BOS = 1,
    TFM_BPE_EOS = 2,
    TFM_BPE_UNK = 3,         /* reserved for compatibility; never produced */
    TFM_BPE_BYTE0 = 4,       /* id of <0x00>; byte b is TFM_BPE_BYTE0 + b */
    TFM_BPE_FIRST_PIECE = 260,
};

/* "▁" (U+2581) in UTF-8. */
#define TFM_BPE_META "\xE2\x96\x81"

typedef struct tfm_bpe_params {
    int vocab_size;       /* total, reserved ids included: 8000. At least 261. */
    int min_frequency;    /* a pair seen fewer times than this is never merged: 2 */
    double char_coverage; /* keep the most frequent characters covering this
                             fraction of all characters; the rest fall back to
                             bytes: 0.9999 */
    int verbose;          /* a summary of each stage on stderr (learning takes
                             about a second, so there is no progress meter): 0 */
    int version;          /* pre-tokenization and file format: 2 splits words
                             at changes of character class, 1 at whitespace
                             only (the old models): 2 */
} tfm_bpe_params;

/* Fills *p with the defaults above. */
void tfm_bpe_default_params(tfm_bpe_params *p);

/* Learns one vocabulary jointly from every line of every file (for a
 * translation model, pass both the source and the target side).
 * Lines end at '\n', which is not part of the line; every other byte is text.
 * On success *out owns a new model (tfm_bpe_free). The vocabulary is smaller
 * than params->vocab_size when the text runs out of pairs seen at least
 * min_frequency times. Errors: TFM_ERR_INVALID (bad params), TFM_ERR_IO (a
 * file cannot be read), TFM_ERR_FORMAT (invalid UTF-8; the message names the
 * file and line), TFM_ERR_NOMEM. Deterministic: the same files in the same
 * order give the same model. */
tfm_status tfm_bpe_learn(const tfm_bpe_params *params, const char *const *files, size_t nfiles,
                         tfm_bpe **out);

/* As tfm_bpe_learn, on the lines of one in-memory text (messages name it
 * "<text>"). */
tfm_status tfm_bpe_learn_text(const tfm_bpe_params *params, const char *text, size_t len,
                              tfm_bpe **out);

/* Writes the model to `path` atomically: path.tmp is written, flushed, synced
 * and renamed over path. Errors: TFM_ERR_IO naming the path.
 *
 * The format is UTF-8 text, one item per line:
 *     transformer.c bpe v2      v1 or v2: the pre-tokenization (see the top)
 *     vocab_size V
 *     chars C
 *     U+2581 ▁          C lines: a code point, then (if printable) the
 *     U+0065 e          character itself; U+2581 stands for the space meta symbol
 *     merges M
 *     ▁ d               M lines: the two pieces merged, in the order learned
 *     e n
 *     end
 */
tfm_status tfm_bpe_save(const tfm_bpe *bpe, const char *path);

/* Reads a model written by tfm_bpe_save. On success *out owns a new model.
 * Errors: TFM_ERR_IO (cannot open or read), TFM_ERR_FORMAT for a malformed,
 * truncated or inconsistent file, with a message naming the file and line,
 * TFM_ERR_NOMEM. */
tfm_status tfm_bpe_load(const char *path, tfm_bpe **out);

/* Frees a model; NULL is allowed. */
void tfm_bpe_free(tfm_bpe *bpe);

/* Number of ids (reserved, bytes, characters and merged pieces). */
int32_t tfm_bpe_vocab_size(const tfm_bpe *bpe);
/* The model's version: 1 (whitespace pre-tokenization) or 2 (whitespace and
 * character classes). */
int tfm_bpe_version(const tfm_bpe *bpe);
/* Number of characters and of merges in the model. */
int32_t tfm_bpe_num_chars(const tfm_bpe *bpe);
int32_t tfm_bpe_num_merges(const tfm_bpe *bpe);

/* The most ids that encoding `len` bytes can give: len + 1. */
static inline size_t tfm_bpe_max_tokens(size_t len) { return len + 1; }

/* Encodes [text, text+len) (UTF-8; may contain any character, '\n' and U+0000
 * included) into ids. The empty text gives no ids. No <s> or </s> is added.
 * On success *ids is a new array of *n ids that the caller frees with free()
 * (NULL when *n is 0). Errors: TFM_ERR_INVALID for invalid UTF-8 (the message
 * gives the byte offset), TFM_ERR_NOMEM. */
tfm_status tfm_bpe_encode(const tfm_bpe *bpe, const char *text, size_t len, int32_t **ids,
                          size_t *n);

/* As tfm_bpe_encode, into a caller buffer of `cap` ids; *n is the number of
 * ids. cap >= tfm_bpe_max_tokens(len) always suffices; with less, an encoding
 * that does not fit gives TFM_ERR_INVALID with *n set to the count needed. */
tfm_status tfm_bpe_encode_into(const tfm_bpe *bpe, const char *text, size_t len, int32_t *ids,
                               size_t cap, size_t *n);

/* Encodes text into its pieces joined by single spaces ("▁Ein ▁Mann"), the
 * form `transformer bpe encode` prints. *pieces is a new NUL-terminated string
 * of *pieces_len bytes (pieces_len may be NULL) freed with free(). Errors as
 * tfm_bpe_encode. */
tfm_status tfm_bpe_encode_pieces(const tfm_bpe *bpe, const char *text, size_t len,
                                 char **pieces, size_t *pieces_len);

/* Decodes ids into text: normal pieces with each '▁' turned into a space,
 * byte tokens as their raw byte; <pad>, <s>, </s> and <unk> are skipped. When
 * the first decoded piece begins with '▁' (the dummy prefix), that space is
 * dropped. *text is a new NUL-terminated string of *len bytes (len may be
 * NULL; the text may hold a NUL byte, and is not valid UTF-8 when the byte
 * tokens do not form whole characters). Errors: TFM_ERR_INVALID for an id
 * outside [0, vocab size), TFM_ERR_NOMEM. */
tfm_status tfm_bpe_decode(const tfm_bpe *bpe, const int32_t *ids, size_t n, char **text,
                          size_t *len);

/* The piece of an id as the text form writes it ("<s>", "<0xE2>", "▁Mann"),
 * NUL-terminated and owned by the model; NULL for an id out of range. */
const char *tfm_bpe_piece(const tfm_bpe *bpe, int32_t id);

/* The id of a piece in the text form (the inverse of tfm_bpe_piece), or -1
 * when [piece, piece+len) is no piece of the model. */
int32_t tfm_bpe_piece_id(const tfm_bpe *bpe, const char *piece, size_t len);

/* ------------------------------------------------------------------------
 * Internal: shared by bpe.c and bpe_train.c, not for other callers.
 */

/* The meta symbol for a space, as a code point in pre-tokenized text. It is
 * outside Unicode so that a literal U+2581 in the input stays distinct. */
#define TFM_BPE_META_CP 0x110000u

/* 1 for the whitespace characters that end a word (U+0020 excluded: a space
 * starts the next word as its '▁' instead). */
int tfm_bpe_is_space(uint32_t cp);

/* The versions this build reads and writes. */
#define TFM_BPE_VERSION_MIN 1
#define TFM_BPE_VERSION_MAX 2

/* Character classes of version 2's pre-tokenization. */
enum {
    TFM_BPE_CLASS_LETTER = 1, /* ASCII letters; from U+0080 on, anything not below */
    TFM_BPE_CLASS_DIGIT,      /* ASCII digits and Unicode \p{N} (², ½, Ⅻ, ١) */
    TFM_BPE_CLASS_OTHER,      /* the rest of ASCII, C1 controls, \p{P}, \p{S} */
    TFM_BPE_CLASS_EXTEND,     /* Mn, Me, Cf, Lm (Case_Ignorable less P and S):
                                 takes the class of the run it follows */
};

/* The class of a non-space code point (TFM_BPE_CLASS_*), from the Unicode
 * tables of unicode_tables.h. Regenerating those tables with a new Unicode
 * version can move newly assigned characters between classes, and so change
 * how v2 models split text holding them. */
int tfm_bpe_char_class(uint32_t cp);

/* Splits valid UTF-8 into words as a model of `version` does. Writes the code
 * points to cps (a space as TFM_BPE_META_CP, plus the dummy prefix), word k
 * being cps[starts[k] .. starts[k+1]). cps needs room for len + 1 entries and
 * starts for len + 2. Returns the number of words, 0 for the empty text. On
 * invalid UTF-8 returns (size_t)-1 and the offset of the first bad byte in
 * *bad. */
size_t tfm_bpe_pretokenize(const char *text, size_t len, int version, uint32_t *cps,
                           uint32_t *starts, size_t *bad);

/* Building a model piece by piece (the trainer and the loader). `version`
 * (TFM_BPE_VERSION_MIN..MAX, asserted) is the pre-tokenization it encodes
 * with. */
tfm_status tfm_bpe_build_new(int version, tfm_bpe **out);
/* Adds code point cp (U+2581 standing for the space meta symbol) as the next
 * character id. Errors: TFM_ERR_INVALID for U+0000, a surrogate, a value
 * beyond U+10FFFF, a duplicate, or once merges exist. */
tfm_status tfm_bpe_build_char(tfm_bpe *bpe, uint32_t cp, int32_t *id);
/* Adds the merge of pieces left and right (ids of characters or merged
 * pieces) with the next rank. *id is the resulting piece: a new id, or the
 * existing one when another merge already made the same string. Errors:
 * TFM_ERR_INVALID when left or right is not a character or merged piece, when
 * the pair is already merged, or when the merged string would read as a
 * reserved piece (<s>, <0x41>, ...) in the text form. */
tfm_status tfm_bpe_build_merge(tfm_bpe *bpe, int32_t left, int32_t right, int32_t *id);

#endif
