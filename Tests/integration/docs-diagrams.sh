#!/usr/bin/env bash
# Docs (issue 13): the pictures in docs/diagrams are generated from their text sources (graphviz
# .dot, mscgen .msc); a source changed without `make diagrams` leaves a stale picture: this
# regenerates each one and compares it with the committed SVG. Every SVG has its source, and
# every picture is linked from the docs.
source "$(dirname "$0")/lib.sh"
lab_init diagrams
command -v dot >/dev/null && command -v mscgen >/dev/null || fail "graphviz and mscgen are missing (scripts/install-deps.sh installs them)"
dir="$ROOT/docs/diagrams"
for source in "$dir"/*.dot "$dir"/*.msc; do
  name=$(basename "${source%.*}")
  case $source in
    *.dot) dot -Tsvg "$source" -o "$LAB_DIR/$name.svg" ;;
    *.msc) mscgen -T svg -i "$source" -o "$LAB_DIR/$name.svg" ;;
  esac
  cmp -s "$LAB_DIR/$name.svg" "$dir/$name.svg" || fail "docs/diagrams/$name.svg is stale: run make diagrams"
  grep -rq "diagrams/$name.svg" "$ROOT/README.md" "$ROOT/docs"/*.md || fail "docs/diagrams/$name.svg is linked from no document"
  echo "      $name.svg: up to date, linked"
done
for svg in "$dir"/*.svg; do
  name=$(basename "${svg%.svg}")
  [ -f "$dir/$name.dot" ] || [ -f "$dir/$name.msc" ] || fail "docs/diagrams/$name.svg has no source"
done
echo "docs-diagrams: all checks passed"
