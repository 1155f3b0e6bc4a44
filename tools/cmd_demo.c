/* cmd_demo.c: placeholder until the subcommand lands. */
#include <stdio.h>

#include "commands.h"

int cmd_demo(int argc, char **argv) {
    (void)argc;
    fprintf(stderr, "transformer %s: not built yet\n", argv[0]);
    return 2;
}
