package kube

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/overlay/netpol"
)

func ptr[T any](v T) *T { return &v }

func TestPolicyOf(t *testing.T) {
	udp, sctp := corev1.ProtocolUDP, corev1.ProtocolSCTP
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"x"}}}}, PodSelector: &metav1.LabelSelector{}},
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}},
				},
				Ports: []networkingv1.NetworkPolicyPort{
					{Port: ptr(intstr.FromInt32(80))},
					{Protocol: &udp, Port: ptr(intstr.FromInt32(1000)), EndPort: ptr(int32(2000))},
					{Protocol: &sctp, Port: ptr(intstr.FromString("assoc"))},
				},
			}},
			Egress: []networkingv1.NetworkPolicyEgressRule{{}},
		},
	}
	got, err := PolicyOf(np)
	if err != nil {
		t.Fatal(err)
	}
	want := netpol.Policy{
		Namespace: "a", Name: "p", PodSelector: netpol.Selector{MatchLabels: map[string]string{"app": "web"}},
		Ingress: true, Egress: true,
		IngressRules: []netpol.Rule{{
			Peers: []netpol.Peer{
				{Namespaces: &netpol.Selector{Exprs: []netpol.Requirement{{Key: "team", Op: netpol.In, Values: []string{"x"}}}}, Pods: &netpol.Selector{}},
				{Block: &netpol.IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}},
			},
			Ports: []netpol.Port{{Proto: netpol.TCP, Port: 80}, {Proto: netpol.UDP, Port: 1000, EndPort: 2000}, {Proto: netpol.SCTP, Name: "assoc"}},
		}},
		EgressRules: []netpol.Rule{{}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// TestPolicyOfBad: objects the API server would refuse give an error that
// says what is wrong, never a panic.
func TestPolicyOfBad(t *testing.T) {
	icmp := corev1.Protocol("ICMP")
	for want, spec := range map[string]networkingv1.NetworkPolicySpec{
		"operator":  {PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Near"}}}},
		"cidr":      {Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "nope"}}}}}},
		"except":    {Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"x"}}}}}}},
		"protocol":  {Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &icmp}}}}},
		"endPort":   {Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromString("http")), EndPort: ptr(int32(90))}}}}},
		"range":     {Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromInt32(70000))}}}}},
		"empty":     {Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{}}}}},
		"selector":  {Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}, PodSelector: &metav1.LabelSelector{}}}}}},
		"policyTyp": {PolicyTypes: []networkingv1.PolicyType{"Sideways"}},
	} {
		_, err := PolicyOf(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "bad"}, Spec: spec})
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			t.Errorf("%s: error %v", want, err)
		}
	}
}

func TestPodOf(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080}, {ContainerPort: 9090}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::5"}}},
	}
	got, ok := PodOf(p)
	want := netpol.Pod{Namespace: "a", Name: "web", Labels: map[string]string{"app": "web"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00::5")}, Node: "n1",
		Ports: []netpol.NamedPort{{Name: "http", Proto: netpol.TCP, Port: 8080}, {Name: "dns", Proto: netpol.UDP, Port: 53}}}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v %v", got, ok)
	}
	for _, mod := range []func(*corev1.Pod){
		func(p *corev1.Pod) { p.Spec.HostNetwork = true },
		func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "", nil },
		func(p *corev1.Pod) {
			p.Status.PodIP, p.Status.PodIPs = "fe80::5%eth0", []corev1.PodIP{{IP: "nonsense"}}
		},
	} {
		q := p.DeepCopy()
		mod(q)
		if _, ok := PodOf(q); ok {
			t.Errorf("%+v: translated, want left out", q.Spec)
		}
	}

	// An IPv6-only pod; an IPv4-mapped address is its IPv4 address, a
	// zoned or unparsable one is no address, duplicates count once.
	q := p.DeepCopy()
	q.Status.PodIP = "fd00::5"
	q.Status.PodIPs = []corev1.PodIP{{IP: "fd00::5"}, {IP: "::ffff:10.244.1.5"}, {IP: "fe80::1%eth0"}, {IP: "10.244.1.5"}, {IP: "x"}}
	got, ok = PodOf(q)
	if wantIPs := []netip.Addr{netip.MustParseAddr("fd00::5"), netip.MustParseAddr("10.244.1.5")}; !ok || !reflect.DeepEqual(got.IPs, wantIPs) {
		t.Errorf("IPs %v %v, want %v", got.IPs, ok, wantIPs)
	}
}

// TestWatcher: the informers' caches become States; bad policies are
// counted and left out.
func TestWatcher(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"team": "x"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "web"}, Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5"}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "deny"}},
		&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "bad"}, Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Sideways"}}},
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := Watch(ctx, cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	st := w.State()
	if len(st.Pods) != 1 || len(st.Namespaces) != 1 || len(st.Policies) != 1 || st.Policies[0].Name != "deny" || w.Invalid() != 1 {
		t.Fatalf("state %+v, invalid %d", st, w.Invalid())
	}
	for len(w.Changes()) > 0 {
		<-w.Changes()
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("a").Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "new"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Changes():
	case <-ctx.Done():
		t.Fatal("no change after a policy was created")
	}
}
