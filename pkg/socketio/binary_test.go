package socketio

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func TestReconstructDeconstruct(t *testing.T) {
	cases := []struct {
		name        string
		placeholder string
		parts       [][]byte
		nats        string
	}{
		{"one", `["upload",{"_placeholder":true,"num":0}]`, [][]byte{{1, 2, 3}}, `["upload",{"_binary":"AQID"}]`},
		{"nested keeps order", `[{"z":1,"file":{"_placeholder":true,"num":1},"a":[{"_placeholder":true,"num":0}]}]`, [][]byte{{0}, {255}}, `[{"z":1,"file":{"_binary":"/w=="},"a":[{"_binary":"AA=="}]}]`},
		{"spaces kept", `[ {"x" : "y"} , 2 ]`, nil, `[ {"x" : "y"} , 2 ]`},
		{"string mentioning keys", `["{\"_placeholder\":true}",{"_placeholder":true,"num":0}]`, [][]byte{{9}}, `["{\"_placeholder\":true}",{"_binary":"CQ=="}]`},
		{"empty attachment", `[{"_placeholder":true,"num":0}]`, [][]byte{{}}, `[{"_binary":""}]`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Reconstruct(json.RawMessage(tc.placeholder), tc.parts)
			if err != nil || string(got) != tc.nats {
				t.Fatalf("Reconstruct = %s, %v; want %s", got, err, tc.nats)
			}
			back, parts, err := Deconstruct(got)
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.parts) == 0 {
				if string(back) != tc.placeholder {
					t.Fatalf("Deconstruct = %s", back)
				}
				return
			}
			// Attachments come back in document order.
			again, err := Reconstruct(back, parts)
			if err != nil || string(again) != tc.nats {
				t.Fatalf("round trip %s, %v", again, err)
			}
		})
	}
}

func TestReconstructErrors(t *testing.T) {
	for _, in := range []string{`[{"_placeholder":true,"num":1}]`, `[{"_placeholder":true,"num":-1}]`, `[{"_placeholder":true,"num":"0"}]`} {
		if _, err := Reconstruct(json.RawMessage(in), [][]byte{{1}}); err == nil {
			t.Errorf("%s: want error", in)
		}
	}
	// Lookalikes are left alone.
	for _, in := range []string{`[{"_placeholder":false,"num":0}]`, `[{"_placeholder":true,"num":0,"x":1}]`} {
		got, err := Reconstruct(json.RawMessage(in), [][]byte{{1}})
		if err != nil || string(got) != in {
			t.Errorf("%s: got %s, %v", in, got, err)
		}
	}
}

func TestDeconstructLeavesLookalikes(t *testing.T) {
	for _, in := range []string{`[{"_binary":1}]`, `[{"_binary":"***"}]`, `[{"_binary":"AA==","x":1}]`} {
		got, parts, err := Deconstruct(json.RawMessage(in))
		if err != nil || string(got) != in || len(parts) != 0 {
			t.Errorf("%s: got %s %v %v", in, got, parts, err)
		}
	}
	got, parts, _ := Deconstruct(json.RawMessage(`["a",{"_binary":"AQ=="},{"_binary":"Ag=="}]`))
	if string(got) != `["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]` || !reflect.DeepEqual(parts, [][]byte{{1}, {2}}) {
		t.Fatalf("got %s %v", got, parts)
	}
}

// FuzzBinary: the JSON rewriter behind Reconstruct and Deconstruct never
// panics, keeps any valid document byte for byte when nothing is replaced,
// and a deconstructed document reconstructs into valid JSON with every
// attachment back in place.
func FuzzBinary(f *testing.F) {
	for _, s := range []string{
		`["a",{"_binary":"AQID"}]`,
		`[{"z":1,"f":{"_binary":"/w=="},"a":[{"_binary":""}]}]`,
		`["{\"_binary\":\"x\"}",{"_placeholder":true,"num":0}]`,
		`[ {"x" : "y"} , 2 , null, true, -1.5e3 ]`,
		`{"_binary":"AR=="}`,
		`[{"_binary":1},{"_binary":"***"}]`,
		`"\u00e9\\\""`,
		`[[[[{}]]]]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		data := json.RawMessage(s)
		if !json.Valid(data) {
			_, _, _ = Deconstruct(data) // must not panic
			_, _ = Reconstruct(data, [][]byte{{1}})
			return
		}
		same, err := rewrite(data, func([]byte) ([]byte, bool, error) { return nil, false, nil })
		if err != nil || string(same) != s {
			t.Fatalf("identity rewrite of %q = %q, %v", s, same, err)
		}
		out, parts, err := Deconstruct(data)
		if err != nil {
			t.Fatalf("Deconstruct(%q): %v", s, err)
		}
		if !json.Valid(out) {
			t.Fatalf("Deconstruct(%q) = %q: not JSON", s, out)
		}
		if bytes.Contains(data, placeholderKey) {
			return // placeholders of its own would need attachments
		}
		back, err := Reconstruct(out, parts)
		if err != nil || !json.Valid(back) {
			t.Fatalf("Reconstruct(%q) = %q, %v", out, back, err)
		}
		if len(parts) > 0 && HasBinary(back) == false {
			t.Fatalf("attachments of %q lost: %q", s, back)
		}
	})
}
