#!/bin/sh
# make deps: install what prereq.tsv lists for the given tiers (demo, test,
# bench; all of them when none is given) and load the kernel modules.
# Idempotent: installs only what is missing, runs `apt-get update` only
# when something is. Without apt-get (or without root) it prints the exact
# packages and commands and exits 1.
set -eu
here=$(dirname "$0")
table="$here/prereq.tsv"
[ $# -gt 0 ] || set -- demo test bench

in_tiers() { # $1: comma-separated tiers of a row; true if any asked tier is in it
	for want in $asked; do
		case ",$1," in *",$want,"*) return 0 ;; esac
	done
	return 1
}
asked="$*"
for t in $asked; do
	case $t in demo | test | bench) ;; *) echo "deps: unknown tier $t (want demo, test or bench)" >&2; exit 2 ;; esac
done

present() { # $1: probe
	case $1 in
	cmd:*) command -v "${1#cmd:}" >/dev/null 2>&1 ;;
	file:*) [ -e "${1#file:}" ] ;;
	dpkg:*) dpkg-query -W -f='${Status}' "${1#dpkg:}" 2>/dev/null | grep -q 'install ok installed' ;;
	*) echo "deps: bad probe $1 in $table" >&2; exit 2 ;;
	esac
}

missing="" why="" modules=""
while IFS='	' read -r kind name a b rest; do
	case $kind in
	pkg)
		in_tiers "$b" || continue
		present "$a" && continue
		case " $missing " in *" $name "*) ;; *) missing="$missing $name" ;; esac
		why="$why
  ${a#*:} (package $name)"
		;;
	mod | modopt)
		in_tiers "$a" || continue
		modules="$modules $kind:$name${b:+:$b}"
		;;
	'' | \#*) ;;
	*) echo "deps: bad row '$kind' in $table" >&2; exit 2 ;;
	esac
done <"$table"

if [ -n "$missing" ]; then
	echo "deps ($asked): missing:$why"
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
		echo "deps: cannot install them here (needs root and apt-get). Install, as root:" >&2
		echo "  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
		echo "or your distribution's packages providing the programs above, then run make again." >&2
		exit 1
	fi
	echo "deps: apt-get install$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $missing
fi

for m in $modules; do
	kind=${m%%:*} m=${m#*:}
	name=${m%%:*} opts=""
	case $m in *:*) opts=$(echo "${m#*:}" | tr ',' ' ') ;; esac
	[ -d "/sys/module/$name" ] && continue
	[ "$(id -u)" = 0 ] && modprobe "$name" $opts 2>/dev/null || true
	if [ ! -d "/sys/module/$name" ] && [ "$kind" = mod ]; then
		echo "deps: kernel module $name is not loaded and cannot be loaded here (as root: modprobe $name $opts)" >&2
		exit 1
	fi
done
