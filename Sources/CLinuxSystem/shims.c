// Everything is in include/CLinuxSystem.h (static inline); SwiftPM needs one source file per C target.
#include "CLinuxSystem.h"
