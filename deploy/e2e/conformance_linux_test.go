package e2e

// c.conformance runs the [sig-network] [Conformance] tests of e2e.test
// v1.34.4 against TestKubernetes's cluster (conformance_test.go has the
// flags and the report reading). It needs, besides the cluster as
// TestKubernetes leaves it after its own checks: kube-proxy on both nodes,
// the kubelets' clusterDNS 10.96.0.10 in cluster.local, the shipped
// conflist (portmap chained, for the hostPort test) and the API server's
// normal endpoint reconciler (the kubernetes Service's endpoint).

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// conformanceResultsDir keeps the log, the JUnit report and the summary
// of the last run after the test's own directories are gone.
func conformanceResultsDir() string {
	if d := os.Getenv("WEFT_CONFORMANCE_RESULTS"); d != "" {
		return d
	}
	return "/var/tmp/weft-conformance"
}

// routeControlPlaneToPods gives the router namespace, where the API
// server runs, a route to each node's pod CIDR through that node. In a
// cluster the API server runs on a node, which reaches every pod over the
// overlay (the model's rule 3); here it runs on no node, and the suite
// reads its DNS probes' results and proxies to pods through it.
func (c *cluster) routeControlPlaneToPods(t *testing.T) {
	t.Helper()
	for n, cidr := range c.nodeCIDRs(t) {
		if out, err := exec.Command("ip", "-n", prefix+"-rtr", "route", "replace", cidr.String(), "via", c.lab.Node(n).UnderlayAddr).CombinedOutput(); err != nil {
			t.Fatalf("route %s via %s in the router: %v: %s", cidr, n, err, out)
		}
	}
}

// conformance runs the suite and fails unless every focused test passed
// or is skipped with a reason in conformanceSkips.
func (c *cluster) conformance(t *testing.T) {
	defer c.use(t)()
	conformanceRan = true
	start := time.Now()
	e2eTest := e2eTestBinary(t)
	c.serviceImages(t)
	if _, err := c.kubectl("", "-n", "kube-system", "get", "deployment", "coredns"); err != nil {
		c.deployCoreDNS()
	}
	c.routeControlPlaneToPods(t)

	res := filepath.Join(conformanceResultsDir(), time.Now().UTC().Format("20060102-150405"))
	if err := os.MkdirAll(res, 0o755); err != nil {
		t.Fatal(err)
	}
	repoList := filepath.Join(res, "repo-list.yaml")
	writeFile(t, repoList, conformanceRepoList(), 0o644)
	junit := filepath.Join(res, "junit.xml")
	logPath := filepath.Join(res, "e2e.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := conformanceArgs(filepath.Join(c.dir, "admin.kubeconfig"), filepath.Join(c.kbin, "kubectl"), repoList, junit)
	// In the router namespace, beside the API server (127.0.0.1:6443).
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + prefix + "-rtr", "--", e2eTest}, args...)...)
	cmd.Env = append(os.Environ(), "KUBE_TEST_REPO_LIST="+repoList)
	cmd.Dir = res
	cmd.Stdout, cmd.Stderr = logf, logf
	t.Logf("e2e.test %s (log %s)", strings.Join(args, " "), logPath)
	runErr := cmd.Run()
	b, err := os.ReadFile(junit)
	if err != nil {
		t.Fatalf("e2e.test (%v) wrote no report: %v; log:\n%s", runErr, err, tailFile(logPath, 40))
	}
	r, err := readConformanceReport(b)
	if err != nil {
		t.Fatalf("%v; e2e.test: %v; log:\n%s", err, runErr, tailFile(logPath, 40))
	}
	var sum strings.Builder
	sum.WriteString(r.String() + " (e2e.test " + k8sVersion + ", focus " + conformanceFocus + ", " + time.Since(start).Round(time.Second).String() + ")\n")
	for _, l := range []struct {
		what  string
		names []string
	}{{"failed", r.Failed}, {"skipped", r.Skipped}, {"passed", r.Passed}} {
		for _, n := range l.names {
			sum.WriteString(l.what + ": " + n)
			if why := r.Reasons[n]; why != "" && l.what != "passed" {
				sum.WriteString(" — " + firstLine(why))
			}
			sum.WriteString("\n")
		}
	}
	for _, s := range r.Setup {
		sum.WriteString("suite setup failed: " + firstLine(s) + "\n")
	}
	writeFile(t, filepath.Join(res, "summary.txt"), sum.String(), 0o644)
	t.Logf("conformance: %s; results in %s", sum.String(), res)
	if len(r.Setup) > 0 || len(r.Failed) > 0 || len(r.Passed) == 0 {
		t.Fatalf("conformance: %s (e2e.test: %v)", r, runErr)
	}
	allowed := map[string]bool{}
	for _, name := range r.Skipped {
		for _, s := range conformanceSkips {
			if matched, _ := regexpMatch(s.pattern, name); matched {
				allowed[name] = true
			}
		}
		if !allowed[name] {
			t.Errorf("skipped without a reason in conformanceSkips: %s (%s)", name, r.Reasons[name])
		}
	}
	if runErr != nil && !t.Failed() {
		t.Fatalf("e2e.test failed (%v) though its report holds no failure; log:\n%s", runErr, tailFile(logPath, 40))
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// TestConformance is `make conformance`: TestKubernetes with the suite as
// its final subtest. It fails, naming the fix, if TestKubernetes ends
// without having run the suite.
func TestConformance(t *testing.T) {
	requireConformance(t)
	conformanceRan = false
	TestKubernetes(t)
	if !conformanceRan && !t.Failed() {
		t.Fatal("TestKubernetes ended without running the conformance suite: it must call `if conformanceWanted() { t.Run(\"Conformance\", c.conformance) }` while both nodes are up")
	}
}

// conformanceRan is set by c.conformance, read by TestConformance.
var conformanceRan bool
