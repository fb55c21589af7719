package billing

import (
	"testing"

	"github.com/stripe/stripe-go/v76"
)

func TestMonthlyAmount(t *testing.T) {
	// sub is a subscription of one item: quantity of a price of amount
	// cents in currency, every count intervals (no recurrence if interval
	// is empty).
	sub := func(amount, quantity int64, currency string, interval stripe.PriceRecurringInterval, count int64) *stripe.Subscription {
		price := &stripe.Price{UnitAmount: amount, Currency: stripe.Currency(currency)}
		if interval != "" {
			price.Recurring = &stripe.PriceRecurring{Interval: interval, IntervalCount: count}
		}
		return &stripe.Subscription{Items: &stripe.SubscriptionItemList{
			Data: []*stripe.SubscriptionItem{{Quantity: quantity, Price: price}}}}
	}
	const (
		month = stripe.PriceRecurringIntervalMonth
		year  = stripe.PriceRecurringIntervalYear
		week  = stripe.PriceRecurringIntervalWeek
		day   = stripe.PriceRecurringIntervalDay
	)
	tests := []struct {
		name         string
		sub          *stripe.Subscription
		want         int64
		wantCurrency string
	}{
		{"monthly", sub(2900, 1, "usd", month, 1), 2900, "usd"},
		{"monthly, three seats", sub(2900, 3, "usd", month, 1), 8700, "usd"},
		{"quantity 0 counts as one", sub(2900, 0, "usd", month, 1), 2900, "usd"},
		{"every 3 months", sub(8700, 1, "eur", month, 3), 2900, "eur"},
		{"interval count 0 counts as one", sub(2900, 1, "usd", month, 0), 2900, "usd"},
		{"yearly", sub(34800, 1, "usd", year, 1), 2900, "usd"},
		{"yearly, rounded down", sub(10000, 1, "usd", year, 1), 833, "usd"},
		{"every 2 years, two seats", sub(34800, 2, "usd", year, 2), 2900, "usd"},
		{"weekly", sub(700, 1, "usd", week, 1), 3033, "usd"},
		{"every 2 weeks", sub(1400, 1, "usd", week, 2), 3033, "usd"},
		{"daily", sub(100, 1, "usd", day, 1), 3041, "usd"},
		{"every 7 days", sub(700, 1, "usd", day, 7), 3041, "usd"},
		{"not recurring", sub(2900, 1, "usd", "", 0), 2900, "usd"},
		{"no items", &stripe.Subscription{}, 0, ""},
		{"an empty list of items", &stripe.Subscription{Items: &stripe.SubscriptionItemList{}}, 0, ""},
		{"an item without a price", &stripe.Subscription{Items: &stripe.SubscriptionItemList{
			Data: []*stripe.SubscriptionItem{{Quantity: 1}}}}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, currency := monthlyAmount(tt.sub)
			if got != tt.want || currency != tt.wantCurrency {
				t.Errorf("monthlyAmount = %d %q, want %d %q", got, currency, tt.want, tt.wantCurrency)
			}
		})
	}
}
