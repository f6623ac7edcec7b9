// Compile-time switches for template parameters (in the manner of flash-attention's static_switch.h).
#pragma once

#include "common/epilogue.h"

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

#define FASTBLOCKS_ACTIVATION_SWITCH(ACT, CONST_NAME, ...)                                         \
  [&] {                                                                                           \
    switch (ACT) {                                                                                \
      case ::fastblocks::Activation::kReLU: {                                                     \
        constexpr static ::fastblocks::Activation CONST_NAME = ::fastblocks::Activation::kReLU;   \
        return __VA_ARGS__();                                                                     \
      }                                                                                           \
      case ::fastblocks::Activation::kReLU6: {                                                    \
        constexpr static ::fastblocks::Activation CONST_NAME = ::fastblocks::Activation::kReLU6;  \
        return __VA_ARGS__();                                                                     \
      }                                                                                           \
      default: {                                                                                  \
        constexpr static ::fastblocks::Activation CONST_NAME = ::fastblocks::Activation::kNone;   \
        return __VA_ARGS__();                                                                     \
      }                                                                                           \
    }                                                                                             \
  }()
