# Compiler flags for shoal's own targets only. Nothing here is global
# (no add_compile_options) and nothing is exported: a project that links
# shoal::shoal gets C++20 and the include path, never our warnings or
# sanitizers.

# Every warning, as an error, on one of our targets.
function(shoal_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror)
endfunction()

# SHOAL_SANITIZE (e.g. address,undefined or thread) on one of our targets:
# compiled with the sanitizers and, for executables and modules, linked with
# their runtime. A no-op when SHOAL_SANITIZE is empty.
function(shoal_sanitize target)
  if(SHOAL_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${SHOAL_SANITIZE} -fno-omit-frame-pointer -g)
    target_link_options(${target} PRIVATE -fsanitize=${SHOAL_SANITIZE})
  endif()
endfunction()
