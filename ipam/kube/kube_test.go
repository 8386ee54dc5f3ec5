package kube

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func node(name string, cidrs ...string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
}

func TestPodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		want []netip.Prefix
		err  error
	}{
		{"podCIDRs", node("a", "10.244.3.0/24"), []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, nil},
		{"dual stack", node("a", "10.244.3.0/24", "fd00:10:244:3::/64"), []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}, nil},
		{"legacy podCIDR", &corev1.Node{Spec: corev1.NodeSpec{PodCIDR: "10.244.9.0/24"}}, []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24")}, nil},
		{"none", node("a"), nil, ErrNoPodCIDR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodCIDRs(tc.n)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
	for _, bad := range []string{"10.244.3.1/24", "garbage", "10.244.3.0/33"} {
		if _, err := PodCIDRs(node("a", bad)); err == nil || errors.Is(err, ErrNoPodCIDR) {
			t.Errorf("PodCIDRs(%q) = %v, want a parse error", bad, err)
		}
	}
	if p, ok := IPv4([]netip.Prefix{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("10.244.1.0/24")}); !ok || p.String() != "10.244.1.0/24" {
		t.Errorf("IPv4 = %v %v", p, ok)
	}
}

func quiet() WaitConfig {
	return WaitConfig{Resync: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// The Node exists with a CIDR already: no waiting.
func TestWaitImmediate(t *testing.T) {
	c := fake.NewClientset(node("n1", "10.244.1.0/24"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, cidrs, err := Wait(ctx, c, "n1", quiet())
	if err != nil || n.Name != "n1" || cidrs[0].String() != "10.244.1.0/24" {
		t.Fatalf("Wait = %v %v %v", n, cidrs, err)
	}
}

// The way a real cluster goes: weftd starts first, the kubelet registers
// the Node without a CIDR, then the controller manager patches one in.
// Wait must return that CIDR, and only after it was set.
func TestWaitForRegistrationAndAllocation(t *testing.T) {
	c := fake.NewClientset(node("other", "10.244.7.0/24"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		cidrs []netip.Prefix
		err   error
		at    time.Time
	}
	done := make(chan result, 1)
	go func() {
		_, cidrs, err := Wait(ctx, c, "n1", quiet())
		done <- result{cidrs, err, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond)
	if _, err := c.CoreV1().Nodes().Create(ctx, node("n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("Wait returned before the CIDR was set: %v %v", r.cidrs, r.err)
	default:
	}
	set := time.Now()
	if _, err := c.CoreV1().Nodes().Update(ctx, node("n1", "10.244.2.0/24"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || len(r.cidrs) != 1 || r.cidrs[0].String() != "10.244.2.0/24" {
		t.Fatalf("Wait = %v %v", r.cidrs, r.err)
	}
	if d := r.at.Sub(set); d > 2*time.Second {
		t.Errorf("Wait took %s after the CIDR was set", d)
	}
}

func TestWaitCancelled(t *testing.T) {
	c := fake.NewClientset()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, _, err := Wait(ctx, c, "n1", quiet()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want deadline exceeded", err)
	}
}

func TestWaitBadCIDR(t *testing.T) {
	c := fake.NewClientset(node("n1", "10.244.1.5/24"))
	if _, _, err := Wait(context.Background(), c, "n1", quiet()); err == nil {
		t.Fatal("Wait accepted a CIDR with host bits")
	}
}

func TestFamilies(t *testing.T) {
	ps := []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("10.244.1.0/24")}
	if p, ok := IPv4(ps); !ok || p != ps[1] {
		t.Fatalf("IPv4 = %v %v", p, ok)
	}
	if p, ok := IPv6(ps); !ok || p != ps[0] {
		t.Fatalf("IPv6 = %v %v", p, ok)
	}
	if _, ok := IPv6(ps[1:]); ok {
		t.Fatal("IPv6 of an IPv4-only list")
	}
}
