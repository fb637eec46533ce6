package timersvc

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// Refusal messages of timerStart (sent to the client as the ack error or as
// an `exception`).
const (
	msgStartUsage = `timerStart expects {"dur": <integer seconds 1..86400>}`
	msgDurMissing = `dur is required: {"dur": <integer seconds 1..86400>}`
	msgDurType    = "dur must be a number of seconds"
	msgDurWhole   = "dur must be a whole number of seconds"
	msgDurRange   = "dur must be between 1 and 86400 seconds"
)

// parseStart reads timerStart's arguments. It returns the duration in
// seconds or the client-facing reason of the refusal.
func parseStart(args []json.RawMessage) (int, string) {
	if len(args) == 0 {
		return 0, msgStartUsage
	}
	raw := bytes.TrimSpace(args[0])
	if len(raw) == 0 || raw[0] != '{' {
		return 0, msgStartUsage
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return 0, msgStartUsage
	}
	v, ok := obj["dur"]
	if !ok {
		return 0, msgDurMissing
	}
	// A JSON number literal starts with a minus sign or a digit.
	if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
		return 0, msgDurType
	}
	return parseDur(string(v))
}

// parseDur checks a JSON number literal exactly (no float rounding): it must
// denote an integer in [api.TimerMinDur, api.TimerMaxDur]. "3.0" and "3e0"
// denote 3 and are accepted; "3.5", "1e-400" are fractions; "1e400" and
// "99999999999999999999" are out of range.
func parseDur(lit string) (int, string) {
	neg := strings.HasPrefix(lit, "-")
	lit = strings.TrimPrefix(lit, "-")
	mant, expStr, hasExp := strings.Cut(strings.ToLower(lit), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	if intPart == "" || !allDigits(intPart) || !allDigits(frac) {
		return 0, msgDurType
	}
	exp := 0
	if hasExp {
		e, ok := parseExp(expStr)
		if !ok {
			return 0, msgDurType
		}
		exp = e
	}
	// value = 0.digits × 10^point
	digits := intPart + frac
	point := len(intPart) + exp
	trimmed := strings.TrimLeft(digits, "0")
	point -= len(digits) - len(trimmed)
	digits = strings.TrimRight(trimmed, "0")
	if digits == "" {
		return 0, msgDurRange // zero
	}
	if point < len(digits) {
		return 0, msgDurWhole
	}
	if neg || point > len(strconv.Itoa(api.TimerMaxDur)) {
		return 0, msgDurRange
	}
	v, err := strconv.Atoi(digits + strings.Repeat("0", point-len(digits)))
	if err != nil || v < api.TimerMinDur || v > api.TimerMaxDur {
		return 0, msgDurRange
	}
	return v, ""
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// expLimit bounds exponents: beyond it a literal is certainly out of range
// (or a fraction), whatever its digits.
const expLimit = 1 << 30

// parseExp parses an exponent, saturating at ±expLimit.
func parseExp(s string) (int, bool) {
	neg := false
	switch {
	case strings.HasPrefix(s, "+"):
		s = s[1:]
	case strings.HasPrefix(s, "-"):
		neg, s = true, s[1:]
	}
	if s == "" || !allDigits(s) {
		return 0, false
	}
	s = strings.TrimLeft(s, "0")
	e := expLimit
	switch {
	case s == "":
		e = 0
	case len(s) < 10:
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, false
		}
		e = min(n, expLimit)
	}
	if neg {
		e = -e
	}
	return e, true
}
