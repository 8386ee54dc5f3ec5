package overlay

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestMasqueradeRules(t *testing.T) {
	pfx := netip.MustParsePrefix
	m := Masquerade{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), Except: []netip.Prefix{pfx("172.16.5.9/16")}}
	got, got6, err := m.rules()
	if err != nil {
		t.Fatal(err)
	}
	want := []masqRule{
		{src: pfx("10.244.1.0/24"), dst: pfx("172.16.0.0/16")},             // an exception returns first
		{src: pfx("10.244.1.0/24"), dst: pfx("10.244.0.0/16"), masq: true}, // then all but the cluster
	}
	if !reflect.DeepEqual(got, want) || got6 != nil {
		t.Fatalf("rules %+v %+v, want %+v and no IPv6", got, got6, want)
	}

	// Dual-stack: each exception goes to its family's chain.
	m.PodCIDR6, m.ClusterCIDR6 = pfx("fd00:10:244:1::/64"), pfx("fd00:10:244::/56")
	m.Except = append(m.Except, pfx("2001:db8:5::1/48"))
	got, got6, err = m.rules()
	if err != nil {
		t.Fatal(err)
	}
	want6 := []masqRule{
		{src: pfx("fd00:10:244:1::/64"), dst: pfx("2001:db8:5::/48")},
		{src: pfx("fd00:10:244:1::/64"), dst: pfx("fd00:10:244::/56"), masq: true},
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(got6, want6) {
		t.Fatalf("dual-stack rules %+v / %+v, want %+v / %+v", got, got6, want, want6)
	}

	for _, bad := range []Masquerade{
		{ClusterCIDR: pfx("10.244.0.0/16")},
		{PodCIDR: pfx("10.244.1.0/24")},
		{PodCIDR: pfx("fd00::/64"), ClusterCIDR: pfx("10.244.0.0/16")},
		{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), Except: []netip.Prefix{pfx("2001:db8::/32")}},
		{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), PodCIDR6: pfx("fd00:10:244:1::/64")},
		{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), PodCIDR6: pfx("10.244.1.0/24"), ClusterCIDR6: pfx("fd00:10:244::/56")},
		{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), PodCIDR6: pfx("::ffff:10.244.1.0/120"), ClusterCIDR6: pfx("fd00:10:244::/56")},
		{PodCIDR: pfx("10.244.1.0/24"), ClusterCIDR: pfx("10.244.0.0/16"), Except: []netip.Prefix{{}}},
	} {
		if _, _, err := bad.rules(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
