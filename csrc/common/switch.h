// Compile-time switches for template parameters (in the manner of flash-attention's static_switch.h).
#pragma once

#define FASTBLOCKS_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                               \
    if (COND) {                                       \
      constexpr static bool CONST_NAME = true;        \
      return __VA_ARGS__();                           \
    } else {                                          \
      constexpr static bool CONST_NAME = false;       \
      return __VA_ARGS__();                           \
    }                                                 \
  }()
