package overlay

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestMasqueradeRules(t *testing.T) {
	pfx := netip.MustParsePrefix
	m := Masquerade{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), Except: []netip.Prefix{pfx("172.16.5.9/16")}}
	got, err := m.rules()
	if err != nil {
		t.Fatal(err)
	}
	want := []masqRule{
		{src: pfx("10.244.1.0/24"), dst: pfx("172.16.0.0/16")},             // an exception returns first
		{src: pfx("10.244.1.0/24"), dst: pfx("10.244.0.0/16"), masq: true}, // then all but the cluster
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rules %+v, want %+v", got, want)
	}
	for _, bad := range []Masquerade{
		{ClusterCIDR: pfx("10.244.0.0/16")},
		{PodCIDR: pfx("10.244.1.0/24")},
		{PodCIDR: pfx("fd00::/64"), ClusterCIDR: pfx("10.244.0.0/16")},
		{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), Except: []netip.Prefix{pfx("2001:db8::/32")}},
	} {
		if _, err := bad.rules(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
