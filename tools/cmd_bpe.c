/* cmd_bpe.c: placeholder until the subcommand lands. */
#include <stdio.h>

#include "commands.h"

int cmd_bpe(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "transformer %s: not built yet\n", argv[0]);
    return 2;
}
