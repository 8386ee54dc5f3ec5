package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Chart geometry, in pixels. The 7×13 bitmap font sets the scale: a
// datapath name of 14 characters is ~100 px, so a group is 130 px wide.
const (
	chartW      = 880
	chartH      = 440
	chartLeft   = 60  // room for the y-axis labels
	chartRight  = 20  //
	chartTop    = 50  // title and legend
	chartBottom = 50  // datapath names
	barW        = 36  // one bar
	barGap      = 6   // between the bars of a group
	charW       = 7   // basicfont.Face7x13's advance
	legendW     = 110 // one legend entry: swatch and "4 streams"
	gridTarget  = 6.0 // about this many grid lines
)

var (
	colBG     = color.RGBA{255, 255, 255, 255}
	colAxis   = color.RGBA{60, 60, 60, 255}
	colGrid   = color.RGBA{225, 225, 225, 255}
	colText   = color.RGBA{20, 20, 20, 255}
	colStream = []color.RGBA{
		{66, 133, 244, 255}, // 1 stream
		{251, 140, 0, 255},  // 4 streams
	}
)

// DrawChart draws the TCP throughput of rows as grouped bars: one group
// per datapath, one bar per stream count, the value on top, "n/a" where a
// datapath has no figure.
func DrawChart(rows []Row, title string) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)

	var dps []string
	max := 0.0
	for _, r := range rows {
		if len(dps) == 0 || dps[len(dps)-1] != r.Datapath {
			dps = append(dps, r.Datapath)
		}
		if r.Gbps != nil && *r.Gbps > max {
			max = *r.Gbps
		}
	}
	step := niceStep(max / gridTarget)
	top := step * math.Ceil(max/step)
	if top == 0 {
		top = 1
	}
	plotH := float64(chartH - chartTop - chartBottom)
	y := func(v float64) int { return chartH - chartBottom - int(math.Round(v/top*plotH)) }

	// Grid and y-axis labels.
	for v := 0.0; v <= top+step/2; v += step {
		py := y(v)
		hline(img, chartLeft, chartW-chartRight, py, colGrid)
		label := fmt.Sprintf("%g", math.Round(v*100)/100)
		text(img, chartLeft-6-len(label)*charW, py+4, label, colText)
	}
	vline(img, chartLeft, chartTop, chartH-chartBottom, colAxis)
	hline(img, chartLeft, chartW-chartRight, chartH-chartBottom, colAxis)
	text(img, 8, chartTop-8, "Gbit/s", colText)
	text(img, chartLeft, 20, title, colText)

	// Legend.
	lx := chartW - chartRight - 2*legendW
	for i, n := range Streams {
		if i >= len(colStream) {
			break
		}
		label := fmt.Sprintf("%d streams", n)
		if n == 1 {
			label = "1 stream"
		}
		fill(img, image.Rect(lx, 28, lx+12, 40), colStream[i])
		text(img, lx+16, 38, label, colText)
		lx += legendW
	}

	if len(dps) == 0 {
		return img
	}
	groupW := (chartW - chartLeft - chartRight) / len(dps)
	for gi, dp := range dps {
		gx := chartLeft + gi*groupW
		bars := len(Streams)*barW + (len(Streams)-1)*barGap
		bx := gx + (groupW-bars)/2
		for si, n := range Streams {
			c := colStream[si%len(colStream)]
			x0 := bx + si*(barW+barGap)
			var v *float64
			for _, r := range rows {
				if r.Datapath == dp && r.Streams == n {
					v = r.Gbps
				}
			}
			label := "n/a"
			if v != nil {
				fill(img, image.Rect(x0, y(*v), x0+barW, chartH-chartBottom), c)
				label = fmt.Sprintf("%.2f", *v)
			}
			top := chartH - chartBottom
			if v != nil {
				top = y(*v)
			}
			text(img, x0+(barW-len(label)*charW)/2, top-4, label, colText)
		}
		text(img, gx+(groupW-len(dp)*charW)/2, chartH-chartBottom+18, dp, colText)
	}
	return img
}

// WriteChart encodes DrawChart's image as PNG.
func WriteChart(w io.Writer, rows []Row, title string) error {
	if err := png.Encode(w, DrawChart(rows, title)); err != nil {
		return fmt.Errorf("encode chart: %w", err)
	}
	return nil
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x <= x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}
