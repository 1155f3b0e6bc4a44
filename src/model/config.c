/* config.c: placeholder; the configuration module lands next. */
#include "core/status.h"
