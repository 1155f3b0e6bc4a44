#!/usr/bin/perl
# scripts/bible/build.pl - builds the Spanish-English Bible parallel corpus
# (RV1909 / World English Bible, verse-aligned) from diatheke OSIS dumps.
# Driven by scripts/get_bible.sh; see docs/data.md.
#
#   build.pl jobs                 print the diatheke calls, one per line:
#                                 MODULE|OPTIONS|KEY|FILE (FILE relative to RAWDIR)
#   build.pl build RAWDIR OUTDIR  read RAWDIR/FILE dumps, write
#                                 OUTDIR/{train,dev,test}.{es,en,ref}
#
# Sources (Debian 12 packages): sword-text-sparv 2.60-1 (module spaRV1909eb,
# KJV versification) and sword-text-web 426.0-1 (module engWEB2015eb, NRSVA
# versification), read with diatheke 1.9.0 as
# `diatheke -b MODULE [-o h] -f OSIS -k 'FIRSTBOOK-LASTBOOK'`. Each output
# line of a dump is "[HEADING]BOOK CH:VS: OSIS-TEXT".
#
# Processing:
#  * Three calls per module, one per range of books (@CHUNKS), about 6 s of
#    CPU in all. English is read with `-o h`: diatheke then prints each psalm
#    title (and each Psalm 119 acrostic letter) once, in front of its verse;
#    without it, the title is repeated before every later verse of the call.
#    These Psalm headings start their verse, so superscriptions begin verse 1
#    in both languages (RV1909 already has them in the verse text). Other
#    headings that -o h prints (Song of Solomon speakers) are ignored.
#  * Markup: <milestone/> and all other tags are removed. Where a tag boundary
#    touches a word character ("God</w><w>created", "PASANDO</w>Jesús",
#    "es<w>su") a space is inserted, except that a Spanish enclitic pronoun is
#    joined to the preceding verb ("<w>di</w>les" -> "diles"; not after the
#    words in %NOJOIN, where it is an article or the next verb's object).
#    Whitespace is collapsed.
#  * Removed: the WEB glossary appended to Revelation 22:21, and the RV1909
#    Pauline subscriptions after the first "Amén." of the last verse of
#    each epistle (%SUBSCRIPTION).
#  * Recased: RV1909 prints the first word of each chapter in capitals:
#    "EN el principio" -> "En el principio", "Y FUERON" -> "Y fueron"
#    (details at recase_first_word).
#  * Alignment by reference, except the shifted chapters (%SHIFT), the 2:1
#    merges (%MERGE) and the dropped pairs (%DROP) below, which were found by
#    content alignment (word-translation table + Gale-Church length score)
#    and are hard-coded here. Pairs empty on either side are dropped.
#  * Split by whole books (dev/test lists below), canonical order.
use strict;
use warnings;
use utf8;

binmode STDOUT, ':encoding(UTF-8)';
binmode STDERR, ':encoding(UTF-8)';

my $ES = 'spaRV1909eb';
my $EN = 'engWEB2015eb';

# The 66 books in canonical order, with diatheke's English names.
my @BOOKS = (
    'Genesis', 'Exodus', 'Leviticus', 'Numbers', 'Deuteronomy', 'Joshua',
    'Judges', 'Ruth', 'I Samuel', 'II Samuel', 'I Kings', 'II Kings',
    'I Chronicles', 'II Chronicles', 'Ezra', 'Nehemiah', 'Esther', 'Job',
    'Psalms', 'Proverbs', 'Ecclesiastes', 'Song of Solomon', 'Isaiah',
    'Jeremiah', 'Lamentations', 'Ezekiel', 'Daniel', 'Hosea', 'Joel', 'Amos',
    'Obadiah', 'Jonah', 'Micah', 'Nahum', 'Habakkuk', 'Zephaniah', 'Haggai',
    'Zechariah', 'Malachi',
    'Matthew', 'Mark', 'Luke', 'John', 'Acts', 'Romans', 'I Corinthians',
    'II Corinthians', 'Galatians', 'Ephesians', 'Philippians', 'Colossians',
    'I Thessalonians', 'II Thessalonians', 'I Timothy', 'II Timothy', 'Titus',
    'Philemon', 'Hebrews', 'James', 'I Peter', 'II Peter', 'I John',
    'II John', 'III John', 'Jude', 'Revelation of John',
);

my %SPLIT = (
    (map { $_ => 'dev' } 'Ruth', 'Lamentations', 'Joel', 'Habakkuk',
        'Philippians', 'I Thessalonians', 'Titus', 'I John'),
    (map { $_ => 'test' } 'Esther', 'Ecclesiastes', 'Micah', 'Galatians',
        'James'),
);

# Spanish chapters numbered inside the KJV frame with Spanish numbering:
# [book, chapter, first verse, last verse, offset]; Spanish c:v is English
# c:(v+offset), counted across the chapter boundary when it leaves the chapter.
my @SHIFT = (
    ['Numbers',        13,  1, 32, -1],
    ['Numbers',        30,  1, 15, -1],
    ['I Samuel',       24,  1, 22, -1],
    ['I Kings',        22, 44, 53, -1],
    ['I Chronicles',   21, 16, 30, -1],
    ['II Chronicles',  33, 10, 24, +1],
    ['Job',            39,  1, 30, -3],
    ['Job',            40,  2, 19, +5],
    ['Hosea',          12,  1, 14, -1],
    ['Jonah',           2,  1, 10, -1],
);

# 2:1 merges: Spanish verse => the two English verses (same chapter) it covers.
my %MERGE = map { $_->[0] => [ $_->[1], $_->[2] ] } (
    ['Numbers 13:33',         'Numbers 13:32',         'Numbers 13:33'],
    ['Numbers 30:16',         'Numbers 30:15',         'Numbers 30:16'],
    ['I Samuel 24:22',        'I Samuel 24:21',        'I Samuel 24:22'],
    ['II Samuel 20:25',       'II Samuel 20:25',       'II Samuel 20:26'],
    ['I Kings 22:53',         'I Kings 22:52',         'I Kings 22:53'],
    ['I Chronicles 21:30',    'I Chronicles 21:29',    'I Chronicles 21:30'],
    ['II Chronicles 33:10',   'II Chronicles 33:10',   'II Chronicles 33:11'],
    ['Job 35:15',             'Job 35:15',             'Job 35:16'],
    ['Hosea 12:14',           'Hosea 12:13',           'Hosea 12:14'],
    ['Jonah 2:10',            'Jonah 2:9',             'Jonah 2:10'],
    ['II Corinthians 13:13',  'II Corinthians 13:13',  'II Corinthians 13:14'],
);

# Spanish verses whose pair is dropped (implausible length ratio, swapped
# verses, or different base text).
my %DROP = map { $_ => 1 } (
    'Judges 14:19', 'Judges 14:20',           # RV1909 verse split differs
    'II Samuel 2:31',                          # Spanish adds 2:32a
    'I Chronicles 1:30', 'I Chronicles 1:31', # verse split differs
    'I Chronicles 1:32', 'I Chronicles 2:34',
    'I Chronicles 21:16',                      # = English 21:15b
    'Job 39:30',                               # = English 39:27-30
    'Matthew 23:13', 'Matthew 23:14',         # swapped in the Majority Text
    'Matthew 27:35',                           # TR adds the prophecy
    'Romans 14:23',                            # WEB appends the doxology
    'II Corinthians 13:12',                    # verse split differs
    'I John 5:7',                              # Comma Johanneum
);

# Last verse of each epistle that carries an RV1909 subscription.
my %SUBSCRIPTION = map { $_ => 1 } (
    'Romans 16:27', 'I Corinthians 16:24', 'II Corinthians 13:13',
    'Galatians 6:18', 'Ephesians 6:24', 'Philippians 4:23',
    'Colossians 4:18', 'I Thessalonians 5:28', 'II Thessalonians 3:18',
    'I Timothy 6:21', 'II Timothy 4:22', 'Titus 3:15', 'Philemon 1:25',
    'Hebrews 13:25',
);

my $ENCLITIC = qr/(?:(?:me|te|se|nos|os)(?:lo|los|la|las|le|les)?|lo|los|la|las|le|les)/;
# Left words that do not take an enclitic: the pronoun after them is an article
# or belongs to the next verb ("que<w>los cubrió", "desolado</w>nos pedían").
my %NOJOIN = map { $_ => 1 } qw(
    como cuánto de dios desolado ejército ella ellos es estaban éste gentes
    jehová josué lo no os que y ya
);

# Strip OSIS markup from one verse.
sub clean {
    my ($t, $lang) = @_;
    $t =~ s{<milestone\b[^>]*/>}{ }g;
    # Tag boundaries that touch word characters on both sides.
    $t =~ s{(?<=\w)((?:<[^>]*>)+)(?=(\w+))}{
        my ($tags, $next) = ($1, $2);
        my ($prev) = substr($t, 0, $-[0]) =~ /(\w+)$/;
        ($lang eq 'es' && $next =~ /^$ENCLITIC$/ && !$NOJOIN{lc $prev})
            ? $tags : "$tags ";
    }ge;
    $t =~ s{<[^>]*>}{}g;
    $t =~ s/\s+/ /g;
    $t =~ s/^ //;
    $t =~ s/ $//;
    return $t;
}

# Book ranges dumped by one diatheke call each (the same for both modules, so
# the NRSVA deuterocanon after Malachi is never read).
my @CHUNKS = (
    [ 'Genesis', 'II Chronicles' ],
    [ 'Ezra',    'Malachi' ],
    [ 'Matthew', 'Revelation of John' ],
);

sub chunk_books {
    my ($first, $last) = @{ $_[0] };
    my ($i) = grep { $BOOKS[$_] eq $first } 0 .. $#BOOKS;
    my ($j) = grep { $BOOKS[$_] eq $last } 0 .. $#BOOKS;
    return @BOOKS[ $i .. $j ];
}

sub jobs {
    # English with -o h: psalm titles are printed once, in front of their
    # verse; without it diatheke repeats a title before every later verse of
    # the same call.
    for my $k (0 .. $#CHUNKS) {
        print "$EN|h|", join('-', @{ $CHUNKS[$k] }), "|en.$k\n";
    }
    for my $k (0 .. $#CHUNKS) {
        print "$ES||", join('-', @{ $CHUNKS[$k] }), "|es.$k\n";
    }
}

# Read one dump of the books @$books; returns a list of
# [book, chapter, verse, heading, osis-text]. Lines are
# "[HEADING]BOOK CH:VS: TEXT"; the book name must start the line or follow
# whitespace or a tag, so "I John 1:1" is not read as "John 1:1".
sub read_dump {
    my ($file, $books) = @_;
    my $alt = join '|', map { quotemeta } sort { length $b <=> length $a } @$books;
    my $re = qr/^(.*?)(?<![^\s>])($alt) (\d+):(\d+): ?(.*)$/s;
    open my $fh, '<:encoding(UTF-8)', $file or die "build.pl: $file: $!\n";
    my (@v, %seen);
    while (my $l = <$fh>) {
        chomp $l;
        if ($l =~ $re) {
            push @v, [ $2, $3, $4, $1, $5 ];
            $seen{$2} = 1;
        } elsif ($l =~ /^\((?:\Q$ES\E|\Q$EN\E)\)$/ || $l eq '') {
            next;
        } else {
            die "build.pl: $file: unexpected line: $l\n";
        }
    }
    close $fh;
    for (@$books) { die "build.pl: $file: no verses of $_\n" unless $seen{$_} }
    return @v;
}

# Psalm 119 acrostic letters (RV1909 spelling); never recased.
my %HEBREW = map { $_ => 1 } qw(
    ALEPH BETH GIMEL DALETH HE VAU ZAIN CHETH TETH JOD CAPH LAMED MEM NUN
    SAMECH AIN PE TZADDI COPH RESH SIN TAU
);

# RV1909 prints the first word of a chapter in capitals. Recase the first
# all-capital word of two or more letters (Hebrew letter names skipped):
# capitalised ("EN el" -> "En el", "¡OH" -> "¡Oh"), or lowercased after a
# one-letter word ("Y FUERON" -> "Y fueron"). Left alone when the next word is
# in capitals too ("EL HOMBRE", "DE SIETE"), as in the reference build.
sub recase_first_word {
    my ($t) = @_;
    while ($t =~ /(?<!\w)(\p{Lu}{2,})(?!\w)/g) {
        my ($w, $s, $e) = ($1, $-[1], $+[1]);
        next if $HEBREW{$w};
        return $t if substr($t, $e) =~ /^\W*?\s\W*\p{Lu}{2,}(?!\w)/;
        my $after_letter = substr($t, 0, $s) =~ /(?<!\w)\p{Lu}\W*$/;
        substr($t, $s, $e - $s) =
            $after_letter ? lc $w : substr($w, 0, 1) . lc substr($w, 1);
        return $t;
    }
    return $t;
}

sub build {
    my ($raw, $out) = @_;
    my (%es, %en, %last_en);
    for my $k (0 .. $#CHUNKS) {
        my @books = chunk_books($CHUNKS[$k]);
        for my $v (read_dump("$raw/es.$k", \@books)) {
            my ($bk, $c, $n, undef, $x) = @$v;
            my $t = clean($x, 'es');
            $t = recase_first_word($t) if $n == 1;
            $t =~ s/^(.*?\bAmén\.).*$/$1/ if $SUBSCRIPTION{"$bk $c:$n"};
            $es{$bk}{$c}{$n} = $t;
        }
        for my $v (read_dump("$raw/en.$k", \@books)) {
            my ($bk, $c, $n, $head, $x) = @$v;
            my $t = clean($x, 'en');
            # Psalm titles and Psalm 119 acrostic letters start their verse;
            # other headings (Song of Solomon speakers) are dropped.
            if ($bk eq 'Psalms') {
                my $h = clean($head, 'en');
                $t = "$h $t" if $h ne '';
            }
            if ("$bk $c:$n" eq 'Revelation of John 22:21') {
                # Glossary appended to the last verse.
                $t =~ s/^(.*?\bAmen\.).*$/$1/;
            }
            $en{$bk}{$c}{$n} = $t;
            $last_en{$bk}{$c} = $n if !$last_en{$bk}{$c} || $n > $last_en{$bk}{$c};
        }
    }

    my %fh;
    for my $s (qw(train dev test)) {
        for my $l (qw(es en ref)) {
            open $fh{"$s.$l"}, '>:encoding(UTF-8)', "$out/$s.$l"
                or die "build.pl: $out/$s.$l: $!\n";
        }
    }
    my %count;
    for my $bk (@BOOKS) {
        my $s = $SPLIT{$bk} // 'train';
        for my $c (sort { $a <=> $b } keys %{ $es{$bk} }) {
            for my $n (sort { $a <=> $b } keys %{ $es{$bk}{$c} }) {
                my $ref = "$bk $c:$n";
                next if $DROP{$ref};
                my $est = $es{$bk}{$c}{$n};
                my (@enrefs, $enlabel);
                if (my $m = $MERGE{$ref}) {
                    @enrefs = @$m;
                    my (undef, $n2) = $m->[1] =~ /(\d+):(\d+)$/;
                    $enlabel = "$m->[0]-$n2";
                } else {
                    my ($ec, $en) = ($c, $n);
                    for my $sh (@SHIFT) {
                        next unless $sh->[0] eq $bk && $sh->[1] == $c
                            && $n >= $sh->[2] && $n <= $sh->[3];
                        $en += $sh->[4];
                        while ($en < 1) {
                            $ec--;
                            die "build.pl: shift leaves $bk\n"
                                unless $last_en{$bk}{$ec};
                            $en += $last_en{$bk}{$ec};
                        }
                        while ($en > ($last_en{$bk}{$ec} // 1e9)) {
                            $en -= $last_en{$bk}{$ec}; $ec++;
                        }
                        last;
                    }
                    @enrefs = ("$bk $ec:$en");
                    $enlabel = $enrefs[0];
                }
                my @ent;
                for my $r (@enrefs) {
                    my ($rc, $rn) = $r =~ /(\d+):(\d+)$/;
                    push @ent, $en{$bk}{$rc}{$rn} // '';
                }
                next if $est eq '' || grep { $_ eq '' } @ent;
                print { $fh{"$s.es"} } "$est\n";
                print { $fh{"$s.en"} } join(' ', @ent), "\n";
                print { $fh{"$s.ref"} } "$ref\t$enlabel\n";
                $count{$s}++;
            }
        }
    }
    for (values %fh) { close $_ or die "build.pl: write: $!\n" }
    printf STDERR "build.pl: %s pairs\n",
        join(', ', map { "$_ " . ($count{$_} // 0) } qw(train dev test));
    # Counts of the reference build (sword-text-sparv 2.60-1,
    # sword-text-web 426.0-1); other package versions may differ.
    my %expect = (train => 29600, dev => 711, test => 751);
    for (sort keys %expect) {
        warn "build.pl: warning: $_ has ", $count{$_} // 0,
            " pairs, the reference build has $expect{$_}\n"
            if ($count{$_} // 0) != $expect{$_};
    }
}

my $cmd = shift // '';
if ($cmd eq 'jobs') {
    jobs();
} elsif ($cmd eq 'build' && @ARGV == 2) {
    build(@ARGV);
} else {
    die "usage: build.pl jobs | build.pl build RAWDIR OUTDIR\n";
}
