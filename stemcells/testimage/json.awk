# json.awk - flatten one JSON document into lines, for the stemforge test agent.
#
# Runs under busybox awk (also gawk/mawk).  Usage:  awk -f json.awk FILE
#
# Output: one line per node, three fields separated by a TAB:
#     PATH <TAB> TYPE <TAB> VALUE
#   PATH   object keys and 0-based array indices joined with "/"; the root node has the
#          empty path.  A key is written in its JSON-escaped form (escapes are kept as
#          they appear in the input, "\/" becomes "/"), then "%" -> "%25" and "/" -> "%2F",
#          so a path never contains a raw "/" that is not a separator; the empty key is
#          written as a lone "%" (which no other key can produce).
#   TYPE   s string, n number, b boolean, z null, o object, a array.
#   VALUE  s: the string's JSON-escaped content without the quotes (escapes such as \n,
#          \" and \u00e9 are passed through unchanged, "\/" becomes "/"), so it can be put
#          back between quotes in JSON output as it is and never holds a raw newline/TAB;
#          n: the number as written; b: true|false; z: null;
#          o / a: the number of members / elements.
#   A container's line comes after the lines of its children.
#
# On malformed input prints one line "!error<TAB>OFFSET<TAB>MESSAGE" and exits 1
# (lines already printed are to be discarded by the caller).  Exit 0 otherwise.

BEGIN {
    doc = ""
    CTL = "[" sprintf("%c", 1) "-" sprintf("%c", 31) "]"
    failed = 0
}

{ doc = doc $0 "\n" }

function fail(msg) {
    if (!failed) printf "!error\t%d\t%s\n", pos, msg
    failed = 1
    exit 1
}

function eat(n) {
    rest = substr(rest, n + 1)
    pos += n
}

function ws() {
    if (match(rest, /^[ \t\r\n]+/)) eat(RLENGTH)
}

# Read the string token at the start of rest (rest begins with a double quote) and return
# its content, validated, with "\/" normalised to "/".
function readstr(    len, k, nb, q, content, t, out, esc) {
    len = 1
    while (1) {
        k = index(substr(rest, len + 1), "\"")
        if (k == 0) fail("unterminated string")
        len += k
        nb = 0
        q = len - 1
        while (q > 1 && substr(rest, q, 1) == "\\") { nb++; q-- }
        if (nb % 2 == 0) break
    }
    content = substr(rest, 2, len - 2)
    eat(len)
    if (index(content, "\\")) {
        t = content
        gsub(/\\(["\\\/bfnrt]|u[0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f])/, "", t)
        if (index(t, "\\")) fail("invalid escape in string")
        if (index(content, "\\/")) {
            out = ""
            t = content
            while (match(t, /\\./)) {
                esc = substr(t, RSTART, 2)
                if (esc == "\\/") esc = "/"
                out = out substr(t, 1, RSTART - 1) esc
                t = substr(t, RSTART + 2)
            }
            content = out t
        }
    }
    if (content ~ CTL) fail("control character in string")
    return content
}

function keyesc(k) {
    if (k == "") return "%"
    gsub(/%/, "%25", k)
    gsub(/\//, "%2F", k)
    return k
}

function child(p, k) {
    return (sp == 1) ? k "" : p "/" k
}

function emit(p, t, v) {
    printf "%s\t%s\t%s\n", p, t, v
}

function closec() {
    emit(spath[sp], (stype[sp] == "{") ? "o" : "a", scount[sp])
    sp--
}

END {
    if (failed) exit 1
    rest = doc
    pos = 0
    sp = 0
    cur = ""
    mode = "value"
    ws()
    if (rest == "") fail("empty document")
    while (1) {
        if (mode == "value") {
            ws()
            c = substr(rest, 1, 1)
            if (c == "{" || c == "[") {
                sp++
                stype[sp] = c
                spath[sp] = cur
                scount[sp] = 0
                eat(1)
                ws()
                if (c == "{") {
                    if (substr(rest, 1, 1) == "}") { eat(1); closec(); mode = "after" }
                    else mode = "key"
                } else {
                    if (substr(rest, 1, 1) == "]") { eat(1); closec(); mode = "after" }
                    else { cur = child(spath[sp], 0); scount[sp] = 1 }
                }
            } else if (c == "\"") {
                emit(cur, "s", readstr())
                mode = "after"
            } else if (match(rest, /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/)) {
                v = substr(rest, 1, RLENGTH)
                eat(RLENGTH)
                emit(cur, "n", v)
                mode = "after"
            } else if (substr(rest, 1, 4) == "true") {
                eat(4); emit(cur, "b", "true"); mode = "after"
            } else if (substr(rest, 1, 5) == "false") {
                eat(5); emit(cur, "b", "false"); mode = "after"
            } else if (substr(rest, 1, 4) == "null") {
                eat(4); emit(cur, "z", "null"); mode = "after"
            } else if (rest == "") {
                fail("unexpected end of document")
            } else {
                fail("unexpected character")
            }
        } else if (mode == "key") {
            ws()
            if (substr(rest, 1, 1) != "\"") fail("expected object key")
            k = keyesc(readstr())
            ws()
            if (substr(rest, 1, 1) != ":") fail("expected ':'")
            eat(1)
            cur = child(spath[sp], k)
            scount[sp]++
            mode = "value"
        } else {
            ws()
            if (sp == 0) {
                if (rest != "") fail("trailing data after document")
                break
            }
            c = substr(rest, 1, 1)
            if (c == ",") {
                eat(1)
                if (stype[sp] == "{") mode = "key"
                else { cur = child(spath[sp], scount[sp]); scount[sp]++; mode = "value" }
            } else if ((c == "}" && stype[sp] == "{") || (c == "]" && stype[sp] == "[")) {
                eat(1)
                closec()
            } else if (rest == "") {
                fail("unexpected end of document")
            } else {
                fail("expected ',' or closing bracket")
            }
        }
    }
}
