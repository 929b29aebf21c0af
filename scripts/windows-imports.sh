#!/usr/bin/env bash
# Checks that cross-linked Windows executables import only DLLs that ship with
# Windows: no MinGW runtime DLL (libssp-0.dll, libgcc_s_seh-1.dll, libwinpthread-1.dll,
# libstdc++-6.dll, ...), which a Windows user would not have.
#   scripts/windows-imports.sh FILE.exe...
set -euo pipefail
objdump=${OBJDUMP:-x86_64-w64-mingw32-objdump}
status=0
for exe in "$@"; do
  [ -f "$exe" ] || { echo "windows-imports: $exe is missing" >&2; status=1; continue; }
  dlls=$("$objdump" -p "$exe" | sed -n 's/^[[:space:]]*DLL Name: //p' | sort -u)
  [ -n "$dlls" ] || { echo "windows-imports: $exe imports nothing (not a PE file?)" >&2; status=1; continue; }
  bad=$(grep -iE '^(lib|cyg|msys-)' <<<"$dlls" || true)
  if [ -n "$bad" ]; then
    echo "windows-imports: $exe needs DLLs Windows does not have: $(tr '\n' ' ' <<<"$bad")" >&2
    status=1
  else
    echo "windows-imports: $(basename "$exe") imports only system DLLs: $(tr '\n' ' ' <<<"$dlls")"
  fi
done
exit $status
