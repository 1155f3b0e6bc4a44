/*
 * unicode_tables.h: the Unicode properties that sacreBLEU-compatible scoring
 * needs, generated from the Python that made the reference numbers
 * (scripts/gen_unicode_tables.py writes unicode_tables.c).
 *
 *   whitespace      Python's str.isspace() (str.split()/str.strip()), Unicode 14.0
 *   lowercase       Python's str.lower() per code point, plus the Cased and
 *                   Case_Ignorable properties of its final-sigma rule, Unicode 14.0
 *   punct/symbol/number   the regex module's \p{P}, \p{S}, \p{N} (tokenize=intl),
 *                   regex 2022.10.31 = Unicode 15.0
 *
 * Range tables are sorted and disjoint; tfm_uni_in() searches them.
 */
#ifndef TFM_TEXT_UNICODE_TABLES_H
#define TFM_TEXT_UNICODE_TABLES_H

#include <stddef.h>
#include <stdint.h>

typedef struct tfm_uni_range { uint32_t lo, hi; } tfm_uni_range;
typedef struct tfm_uni_pair { uint32_t from, to; } tfm_uni_pair;
typedef struct tfm_uni_multi { uint32_t from; uint32_t n; uint32_t to[3]; } tfm_uni_multi;

extern const tfm_uni_range tfm_uni_space[];
extern const size_t tfm_uni_space_count;
extern const tfm_uni_range tfm_uni_case_ignorable[];
extern const size_t tfm_uni_case_ignorable_count;
extern const tfm_uni_range tfm_uni_cased[];
extern const size_t tfm_uni_cased_count;
extern const tfm_uni_range tfm_uni_punct[];
extern const size_t tfm_uni_punct_count;
extern const tfm_uni_range tfm_uni_symbol[];
extern const size_t tfm_uni_symbol_count;
extern const tfm_uni_range tfm_uni_number[];
extern const size_t tfm_uni_number_count;
extern const tfm_uni_pair tfm_uni_lower[];
extern const size_t tfm_uni_lower_count;
extern const tfm_uni_multi tfm_uni_lower_multi[];
extern const size_t tfm_uni_lower_multi_count;

/* 1 if cp lies in one of the n sorted ranges of t. */
static inline int tfm_uni_in(const tfm_uni_range *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < t[mid].lo) hi = mid;
        else if (cp > t[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* Python's str.isspace() for one code point. */
static inline int tfm_uni_is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
    return tfm_uni_in(tfm_uni_space, tfm_uni_space_count, cp);
}

#endif
