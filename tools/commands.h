/*
 * commands.h: the CLI's subcommands, one file each (tools/cmd_NAME.c).
 * Each takes the arguments after its own name (argv[0] is the subcommand's
 * name) and returns the process exit status: 0 success, 1 runtime error,
 * 2 usage error.
 */
#ifndef TFM_TOOLS_COMMANDS_H
#define TFM_TOOLS_COMMANDS_H

int cmd_demo(int argc, char **argv);
int cmd_bpe(int argc, char **argv);
int cmd_bleu(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_average(int argc, char **argv);
int cmd_translate(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_attention(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
